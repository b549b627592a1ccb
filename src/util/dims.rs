//! Wildcard dims: `-1` in a config's dims stands for any size. Every check of a shape against
//! declared dims goes through here.

/// Whether `dims` fits `pattern` (same rank; a `-1` in `pattern` matches any size).
pub(crate) fn fits(pattern: &[i64], dims: &[i64]) -> bool {
    pattern.len() == dims.len() && pattern.iter().zip(dims).all(|(&p, &d)| p == -1 || p == d)
}

/// Whether two declared dims (either may hold `-1`) can describe the same tensor.
pub(crate) fn compatible(a: &[i64], b: &[i64]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(&x, &y)| x == y || x == -1 || y == -1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_any_size_and_ranks_must_agree() {
        assert!(fits(&[-1, 3], &[7, 3]));
        assert!(fits(&[-1, 3], &[-1, 3]));
        assert!(
            !fits(&[2, 3], &[-1, 3]),
            "a wildcard in dims does not fit a fixed pattern"
        );
        assert!(!fits(&[-1, 3], &[7, 3, 1]));
        assert!(compatible(&[-1, 3], &[5, -1]));
        assert!(!compatible(&[2, 3], &[5, 3]));
        assert!(!compatible(&[2], &[2, 1]));
    }
}
