//! What the benchmarks share: their settings from the environment and their medians.
// Each benchmark uses part of it.
#![allow(dead_code)]

/// The numbers in the environment variable `name` (separated by white space), or `default`
/// when it is unset or holds none.
pub fn env_list(name: &str, default: &[usize]) -> Vec<usize> {
    std::env::var(name)
        .ok()
        .map(|v| v.split_whitespace().filter_map(|x| x.parse().ok()).collect())
        .filter(|v: &Vec<usize>| !v.is_empty())
        .unwrap_or_else(|| default.to_vec())
}

/// The median of `v` (the upper one of an even count); sorts `v`.
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
