//! A metric family whose series are found by their label values as borrowed strings.
//!
//! `prometheus_client`'s `Family` is keyed by the owned label set, so finding a series
//! means building that set (a `Vec` and a `String` per label) and SipHashing it, for
//! every series a request touches: most of what metrics cost per request. Here a series,
//! once created, is found again by an FxHash of the borrowed values and a comparison,
//! with nothing allocated; the family still owns the series and renders them.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::RwLock;

use prometheus_client::metrics::family::Family;
use rustc_hash::FxHasher;

/// Label names and values; names are static, values few (no request ids).
pub(super) type Labels = Vec<(&'static str, String)>;

/// Series already created, by the hash of their values; a collision's series share
/// the bucket and are told apart by their values.
type Found<M> = HashMap<u64, Vec<(Box<[Box<str>]>, M)>, BuildHasherDefault<IdentityHasher>>;

pub(super) struct Series<M: 'static> {
    family: Family<Labels, M, fn() -> M>,
    /// The label names, in the order `get` takes the values.
    names: &'static [&'static str],
    found: RwLock<Found<M>>,
}

impl<M: Clone + prometheus_client::metrics::TypedMetric + 'static> Series<M> {
    pub(super) fn new(
        family: Family<Labels, M, fn() -> M>,
        names: &'static [&'static str],
    ) -> Series<M> {
        Series {
            family,
            names,
            found: RwLock::new(Found::default()),
        }
    }

    /// The series with these label values, one per name, in order; an empty value
    /// leaves its label out.
    pub(super) fn get(&self, values: &[&str]) -> M {
        debug_assert_eq!(values.len(), self.names.len());
        let hash = hash_of(values);
        if let Ok(found) = self.found.read() {
            if let Some(m) = lookup(&found, hash, values) {
                return m;
            }
        }
        let labels: Labels = self
            .names
            .iter()
            .zip(values)
            .filter(|(_, v)| !v.is_empty())
            .map(|(n, v)| (*n, (*v).to_owned()))
            .collect();
        let metric = self.family.get_or_create(&labels).clone();
        if let Ok(mut found) = self.found.write() {
            if lookup(&found, hash, values).is_none() {
                let owned = values.iter().map(|v| Box::from(*v)).collect();
                found.entry(hash).or_default().push((owned, metric.clone()));
            }
        }
        metric
    }
}

fn lookup<M: Clone>(found: &Found<M>, hash: u64, values: &[&str]) -> Option<M> {
    found.get(&hash)?.iter().find_map(|(owned, m)| {
        (owned.len() == values.len() && owned.iter().zip(values).all(|(a, b)| &**a == *b))
            .then(|| m.clone())
    })
}

fn hash_of(values: &[&str]) -> u64 {
    let mut h = BuildHasherDefault::<FxHasher>::default().build_hasher();
    for v in values {
        h.write(v.as_bytes());
        // A separator, so that ("ab", "c") and ("a", "bc") differ.
        h.write_u8(0xff);
    }
    h.finish()
}

/// The map's keys are hashes already.
#[derive(Default)]
pub(super) struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::encoding::text::encode_registry;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::registry::Registry;

    use super::*;

    #[test]
    fn the_same_values_find_the_same_series_and_empty_values_leave_their_label_out() {
        let family = Family::<Labels, Counter>::default();
        let mut registry = Registry::default();
        registry.register("things", "Things", family.clone());
        let series = Series::new(family, &["model", "error_type"]);
        series.get(&["m", ""]).inc();
        series.get(&["m", ""]).inc();
        series.get(&["m", "timeout"]).inc();
        // The separator keeps values that concatenate alike apart.
        series.get(&["ab", "c"]).inc();
        series.get(&["a", "bc"]).inc();
        let mut text = String::new();
        encode_registry(&mut text, &registry).expect("encode");
        assert!(text.contains("things_total{model=\"m\"} 2\n"), "{text}");
        assert!(
            text.contains("things_total{model=\"m\",error_type=\"timeout\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("things_total{model=\"ab\",error_type=\"c\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("things_total{model=\"a\",error_type=\"bc\"} 1\n"),
            "{text}"
        );
    }

    #[test]
    fn colliding_hashes_keep_their_series_apart() {
        let family = Family::<Labels, Counter>::default();
        let series = Series::new(family, &["v"]);
        let a = series.get(&["x"]);
        // Put "y"'s series into "x"'s bucket, as a collision would.
        let y = Counter::default();
        {
            let mut found = series.found.write().expect("lock");
            let bucket = found.entry(hash_of(&["x"])).or_default();
            bucket.push((vec![Box::from("y")].into_boxed_slice(), y.clone()));
        }
        a.inc();
        assert_eq!(series.get(&["x"]).get(), 1);
        y.inc_by(5);
        assert_eq!(
            lookup(&series.found.read().expect("lock"), hash_of(&["x"]), &["y"]).map(|c| c.get()),
            Some(5)
        );
    }
}
