//! `util/`: the small rules several layers share, each written once: path confinement
//! ([`paths`]), wildcard-dim matching ([`dims`]), the least-recently-used cache of plans
//! ([`lru`]) and which outputs a request keeps ([`wanted`]). A leaf: it names nothing else in
//! the crate.

pub(crate) mod dims;
pub(crate) mod lru;
pub(crate) mod paths;

/// The entries of `produced` whose name is in `wanted`, in `produced`'s order: how every
/// executor answers a request that asked for some outputs only.
pub(crate) fn wanted<T>(
    produced: impl IntoIterator<Item = (String, T)>,
    wanted: &[String],
) -> Vec<(String, T)> {
    produced
        .into_iter()
        .filter(|(n, _)| wanted.contains(n))
        .collect()
}

/// A check a unit test cannot make on this machine, said where CI shows it: the same helper
/// as the integration tests' (`tests/common/skip.rs`).
#[cfg(test)]
#[path = "../../tests/common/skip.rs"]
mod skip;
#[cfg(test)]
pub(crate) use skip::skip;

/// Whether CI asked for the NVRTC or GPU checks to run (`MODELYARD_REQUIRE_NVRTC` or
/// `MODELYARD_REQUIRE_GPU=1`): then a missing NVRTC fails a test instead of skipping it.
#[cfg(test)]
pub(crate) fn nvrtc_required() -> bool {
    std::env::var_os("MODELYARD_REQUIRE_NVRTC").is_some()
        || std::env::var("MODELYARD_REQUIRE_GPU").as_deref() == Ok("1")
}

#[cfg(test)]
mod tests {
    #[test]
    fn wanted_keeps_the_named_outputs_in_produced_order() {
        let produced = vec![("a".to_string(), 1), ("b".into(), 2), ("c".into(), 3)];
        let kept = super::wanted(produced, &["c".into(), "a".into()]);
        assert_eq!(kept, [("a".to_string(), 1), ("c".to_string(), 3)]);
    }
}
