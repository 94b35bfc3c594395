//! A small JSON Schema validator for the subset that tool parameters and structured
//! outputs use. Tests (here and in the gateway) use it to check that generated tool
//! arguments and `json_schema` answers really are valid; it is not a full implementation.
//!
//! Supported: `type` (string or list), `properties`, `required`, `additionalProperties`
//! (bool or schema), `items`, `prefixItems`, `minItems`, `maxItems`, `uniqueItems`,
//! `enum`, `const`, `anyOf`, `oneOf`, `allOf`, `not`, local `$ref`, `minLength`,
//! `maxLength`, `minimum`, `maximum`, `exclusiveMinimum`, `exclusiveMaximum` (both
//! drafts), `multipleOf`. Formats and patterns are not checked.

use serde_json::Value;

/// Checks `value` against `schema`; the error names the failing location.
pub fn validate(schema: &Value, value: &Value) -> Result<(), String> {
    check(schema, schema, value, "$", 0)
}

fn check(
    schema: &Value,
    root: &Value,
    value: &Value,
    at: &str,
    depth: usize,
) -> Result<(), String> {
    if depth > 64 {
        return Err(format!("{at}: schema nests too deeply"));
    }
    let map = match schema {
        Value::Bool(true) => return Ok(()),
        Value::Bool(false) => return Err(format!("{at}: schema `false` accepts nothing")),
        Value::Object(map) => map,
        _ => return Err(format!("{at}: schema is not an object")),
    };
    if let Some(reference) = map.get("$ref").and_then(Value::as_str) {
        let target = reference
            .strip_prefix('#')
            .and_then(|p| {
                if p.is_empty() {
                    Some(root)
                } else {
                    root.pointer(p)
                }
            })
            .ok_or_else(|| format!("{at}: unresolvable $ref {reference}"))?;
        check(target, root, value, at, depth + 1)?;
    }
    if let Some(c) = map.get("const") {
        if !json_equal(c, value) {
            return Err(format!("{at}: expected const {c}, got {value}"));
        }
    }
    if let Some(Value::Array(options)) = map.get("enum") {
        if !options.iter().any(|o| json_equal(o, value)) {
            return Err(format!("{at}: {value} is not one of {options:?}"));
        }
    }
    if let Some(Value::Array(options)) = map.get("anyOf") {
        if !options
            .iter()
            .any(|o| check(o, root, value, at, depth + 1).is_ok())
        {
            return Err(format!("{at}: {value} matches no anyOf branch"));
        }
    }
    if let Some(Value::Array(options)) = map.get("oneOf") {
        let matching = options
            .iter()
            .filter(|o| check(o, root, value, at, depth + 1).is_ok())
            .count();
        if matching != 1 {
            return Err(format!("{at}: {value} matches {matching} oneOf branches"));
        }
    }
    if let Some(Value::Array(parts)) = map.get("allOf") {
        for part in parts {
            check(part, root, value, at, depth + 1)?;
        }
    }
    if let Some(not) = map.get("not") {
        if check(not, root, value, at, depth + 1).is_ok() {
            return Err(format!("{at}: {value} matches a `not` schema"));
        }
    }
    match map.get("type") {
        Some(Value::String(t)) => check_type(t, value, at)?,
        Some(Value::Array(types))
            if !types
                .iter()
                .filter_map(Value::as_str)
                .any(|t| check_type(t, value, at).is_ok()) =>
        {
            return Err(format!("{at}: {value} is none of the types {types:?}"));
        }
        _ => {}
    }
    match value {
        Value::Object(obj) => {
            if let Some(Value::Array(required)) = map.get("required") {
                for name in required.iter().filter_map(Value::as_str) {
                    if !obj.contains_key(name) {
                        return Err(format!("{at}: missing required property {name:?}"));
                    }
                }
            }
            let properties = map.get("properties").and_then(Value::as_object);
            for (k, v) in obj {
                let child = format!("{at}.{k}");
                match properties.and_then(|p| p.get(k)) {
                    Some(prop) => check(prop, root, v, &child, depth + 1)?,
                    None => match map.get("additionalProperties") {
                        Some(Value::Bool(false)) => {
                            return Err(format!("{at}: unexpected property {k:?}"))
                        }
                        Some(extra @ Value::Object(_)) => check(extra, root, v, &child, depth + 1)?,
                        _ => {}
                    },
                }
            }
        }
        Value::Array(items) => {
            let len = items.len() as u64;
            if let Some(min) = map.get("minItems").and_then(Value::as_u64) {
                if len < min {
                    return Err(format!("{at}: {len} items, fewer than {min}"));
                }
            }
            if let Some(max) = map.get("maxItems").and_then(Value::as_u64) {
                if len > max {
                    return Err(format!("{at}: {len} items, more than {max}"));
                }
            }
            if map.get("uniqueItems").and_then(Value::as_bool) == Some(true) {
                for (i, a) in items.iter().enumerate() {
                    if items[..i].iter().any(|b| json_equal(a, b)) {
                        return Err(format!("{at}: duplicate item {a}"));
                    }
                }
            }
            let prefix: &[Value] = match (map.get("prefixItems"), map.get("items")) {
                (Some(Value::Array(p)), _) | (None, Some(Value::Array(p))) => p,
                _ => &[],
            };
            for (i, item) in items.iter().enumerate() {
                let child = format!("{at}[{i}]");
                if let Some(s) = prefix.get(i) {
                    check(s, root, item, &child, depth + 1)?;
                } else if let Some(s @ (Value::Object(_) | Value::Bool(_))) = map.get("items") {
                    check(s, root, item, &child, depth + 1)?;
                }
            }
        }
        Value::String(s) => {
            let len = s.chars().count() as u64;
            if let Some(min) = map.get("minLength").and_then(Value::as_u64) {
                if len < min {
                    return Err(format!("{at}: string shorter than {min}"));
                }
            }
            if let Some(max) = map.get("maxLength").and_then(Value::as_u64) {
                if len > max {
                    return Err(format!("{at}: string longer than {max}"));
                }
            }
        }
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or(0.0);
            let min = map.get("minimum").and_then(Value::as_f64);
            let max = map.get("maximum").and_then(Value::as_f64);
            if let Some(min) = min {
                let exclusive = map.get("exclusiveMinimum") == Some(&Value::Bool(true));
                if x < min || (exclusive && x == min) {
                    return Err(format!("{at}: {x} below minimum {min}"));
                }
            }
            if let Some(max) = max {
                let exclusive = map.get("exclusiveMaximum") == Some(&Value::Bool(true));
                if x > max || (exclusive && x == max) {
                    return Err(format!("{at}: {x} above maximum {max}"));
                }
            }
            if let Some(emin) = map.get("exclusiveMinimum").and_then(Value::as_f64) {
                if x <= emin {
                    return Err(format!("{at}: {x} not above {emin}"));
                }
            }
            if let Some(emax) = map.get("exclusiveMaximum").and_then(Value::as_f64) {
                if x >= emax {
                    return Err(format!("{at}: {x} not below {emax}"));
                }
            }
            if let Some(step) = map.get("multipleOf").and_then(Value::as_f64) {
                let q = x / step;
                if step > 0.0 && (q - q.round()).abs() > 1e-9 {
                    return Err(format!("{at}: {x} is not a multiple of {step}"));
                }
            }
        }
        _ => {}
    }
    Ok(())
}

fn check_type(t: &str, value: &Value, at: &str) -> Result<(), String> {
    let ok = match t {
        "null" => value.is_null(),
        "boolean" => value.is_boolean(),
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "number" => value.is_number(),
        "integer" => {
            value.is_i64() || value.is_u64() || value.as_f64().is_some_and(|f| f.fract() == 0.0)
        }
        _ => true,
    };
    if ok {
        Ok(())
    } else {
        Err(format!("{at}: {value} is not of type {t}"))
    }
}

/// JSON equality where 1 and 1.0 are the same number, as JSON Schema requires.
fn json_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| json_equal(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_equal(v, w)))
        }
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rejects_what_it_should() {
        let schema = json!({
            "type": "object",
            "properties": {
                "n": {"type": "integer", "minimum": 1, "exclusiveMaximum": 5},
                "s": {"type": "string", "enum": ["a", "b"]},
                "l": {"type": "array", "items": {"type": "boolean"}, "maxItems": 1}
            },
            "required": ["n"],
            "additionalProperties": false
        });
        assert!(validate(&schema, &json!({"n": 1, "s": "a", "l": [true]})).is_ok());
        assert!(validate(&schema, &json!({"n": 4.0})).is_ok());
        assert!(validate(&schema, &json!({})).is_err());
        assert!(validate(&schema, &json!({"n": 5})).is_err());
        assert!(validate(&schema, &json!({"n": 0})).is_err());
        assert!(validate(&schema, &json!({"n": 1.5})).is_err());
        assert!(validate(&schema, &json!({"n": 1, "s": "c"})).is_err());
        assert!(validate(&schema, &json!({"n": 1, "x": 1})).is_err());
        assert!(validate(&schema, &json!({"n": 1, "l": [true, false]})).is_err());
        assert!(validate(&schema, &json!({"n": 1, "l": ["x"]})).is_err());
        assert!(validate(&schema, &json!([1])).is_err());
    }

    #[test]
    fn combinators_and_refs() {
        let schema = json!({
            "$defs": {"N": {"type": "integer"}},
            "oneOf": [{"$ref": "#/$defs/N"}, {"type": "string"}]
        });
        assert!(validate(&schema, &json!(3)).is_ok());
        assert!(validate(&schema, &json!("x")).is_ok());
        assert!(validate(&schema, &json!(true)).is_err());
        let nullable = json!({"anyOf": [{"type": "string"}, {"type": "null"}]});
        assert!(validate(&nullable, &Value::Null).is_ok());
        assert!(validate(&nullable, &json!(1)).is_err());
        let both = json!({"allOf": [{"required": ["a"]}, {"required": ["b"]}]});
        assert!(validate(&both, &json!({"a": 1, "b": 2})).is_ok());
        assert!(validate(&both, &json!({"a": 1})).is_err());
    }
}
