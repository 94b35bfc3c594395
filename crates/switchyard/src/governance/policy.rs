//! The effective policy of a key: its own policy combined with its team's and the
//! gateway's defaults. Combining never loosens: a key can only narrow what its team
//! allows.

use crate::config::policy::{PiiMode, Policy, PolicyCache};

/// Whether `model` matches a policy entry (`name`, or `prefix*`).
fn model_matches(pattern: &str, model: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => model.starts_with(prefix),
        None => pattern == model,
    }
}

/// Where a request may be served: handed to routing, which filters deployments by it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DataPolicy {
    /// `None`: any region. `Some(empty)`: none (the team's and key's lists do not meet).
    pub allowed_regions: Option<Vec<String>>,
    pub required_tags: Vec<String>,
    /// Whether prompt and response may be kept in the ledger.
    pub log_content: bool,
}

/// A key's policy combined with its team's and the gateway's defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EffectivePolicy {
    /// Each level's model list; a model must be allowed by every one.
    pub model_lists: Vec<Vec<String>>,
    pub max_tokens: Option<u32>,
    pub data: DataPolicy,
    pub pii: PiiMode,
    /// The channel profile requests get when they name none (the narrowest level's).
    pub channel: Option<String>,
    /// Each level's list of channels a request may choose; one must be in every list.
    pub channel_lists: Vec<Vec<String>>,
    /// The response-cache opt-in, when a level has one: the shortest TTL, and
    /// `any_temperature` only when every level that opts in says so.
    pub cache: Option<PolicyCache>,
}

impl EffectivePolicy {
    /// Combines policies from the widest (team) to the narrowest (key).
    pub fn combine(levels: &[&Policy], default_pii: PiiMode) -> EffectivePolicy {
        let mut out = EffectivePolicy {
            pii: default_pii,
            data: DataPolicy {
                log_content: true,
                ..DataPolicy::default()
            },
            ..EffectivePolicy::default()
        };
        for p in levels {
            if let Some(models) = &p.models {
                out.model_lists.push(models.clone());
            }
            out.max_tokens = match (out.max_tokens, p.max_tokens) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            if let Some(regions) = &p.allowed_regions {
                out.data.allowed_regions = Some(match out.data.allowed_regions.take() {
                    None => regions.clone(),
                    Some(prev) => prev.into_iter().filter(|r| regions.contains(r)).collect(),
                });
            }
            for tag in &p.required_tags {
                if !out.data.required_tags.contains(tag) {
                    out.data.required_tags.push(tag.clone());
                }
            }
            if p.log_content == Some(false) {
                out.data.log_content = false;
            }
            if let Some(mode) = p.pii {
                out.pii = out.pii.max(mode);
            }
            if let Some(channel) = &p.channel {
                out.channel = Some(channel.clone());
            }
            if let Some(list) = &p.channels {
                out.channel_lists.push(list.clone());
            }
            if let Some(c) = p.cache {
                out.cache = Some(match out.cache {
                    None => c,
                    Some(prev) => PolicyCache {
                        ttl_s: prev.ttl_s.min(c.ttl_s),
                        any_temperature: prev.any_temperature && c.any_temperature,
                    },
                });
            }
        }
        out
    }

    /// Whether a request may choose `channel` with the header: the policy's own
    /// channel always, another one when every level lists it (and one level at least).
    pub fn allows_channel(&self, channel: &str) -> bool {
        self.channel.as_deref() == Some(channel)
            || (!self.channel_lists.is_empty()
                && self
                    .channel_lists
                    .iter()
                    .all(|list| list.iter().any(|c| c == channel)))
    }

    pub fn allows_model(&self, model: &str) -> bool {
        self.model_lists
            .iter()
            .all(|list| list.iter().any(|p| model_matches(p, model)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combining_only_narrows() {
        let team = Policy {
            models: Some(vec!["support-*".into(), "gpt-4o-mini".into()]),
            max_tokens: Some(1000),
            allowed_regions: Some(vec!["eu-west".into(), "us-east".into()]),
            required_tags: vec!["no-training".into()],
            pii: Some(PiiMode::Redact),
            ..Policy::default()
        };
        let key = Policy {
            models: Some(vec!["support-chat".into(), "gpt-4o".into()]),
            max_tokens: Some(5000),
            allowed_regions: Some(vec!["eu-west".into()]),
            required_tags: vec!["zero-retention".into()],
            log_content: Some(false),
            pii: Some(PiiMode::Log),
            ..Policy::default()
        };
        let e = EffectivePolicy::combine(&[&team, &key], PiiMode::Off);
        assert!(e.allows_model("support-chat"));
        assert!(!e.allows_model("gpt-4o")); // the team does not allow it
        assert!(!e.allows_model("gpt-4o-mini")); // the key does not list it
        assert_eq!(e.max_tokens, Some(1000));
        assert_eq!(e.data.allowed_regions, Some(vec!["eu-west".to_owned()]));
        assert_eq!(e.data.required_tags, vec!["no-training", "zero-retention"]);
        assert!(!e.data.log_content);
        assert_eq!(e.pii, PiiMode::Redact); // the stricter of the two

        let open = EffectivePolicy::combine(&[], PiiMode::Log);
        assert!(open.allows_model("anything"));
        assert!(open.data.log_content);
        assert_eq!(open.data.allowed_regions, None);
        assert_eq!(open.pii, PiiMode::Log);
        assert_eq!(open.cache, None);
    }

    #[test]
    fn cache_opt_ins_combine_to_the_shorter_ttl() {
        let level = |ttl_s, any_temperature| Policy {
            cache: Some(PolicyCache {
                ttl_s,
                any_temperature,
            }),
            ..Policy::default()
        };
        let (team, key) = (level(600, true), level(60, false));
        let e = EffectivePolicy::combine(&[&team, &key], PiiMode::Off);
        assert_eq!(
            e.cache,
            Some(PolicyCache {
                ttl_s: 60,
                any_temperature: false
            })
        );
        let only_team = EffectivePolicy::combine(&[&team, &Policy::default()], PiiMode::Off);
        assert_eq!(only_team.cache, team.cache);
    }
}
