//! Packing claimed jobs into provider requests: by count and by tokens, never above
//! either cap, keeping claim order (highest priority first) and losing or repeating nothing.

/// The limits one request must respect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanCaps {
    /// Most inputs in one request (`BATCH_SIZE`, never above the provider's cap).
    pub max_inputs: usize,
    /// Most tokens in one request (the provider's cap, never above a minute's token budget).
    pub max_tokens: usize,
}

/// Splits items with the given token counts into requests: lists of indexes into `tokens`.
///
/// Greedy in order: an item opens a new request when it would push the current one over
/// either cap. An item that alone exceeds the token cap (callers truncate or reject such
/// inputs first; this is the safety net) travels alone rather than being dropped.
pub fn plan(tokens: &[usize], caps: PlanCaps) -> Vec<Vec<usize>> {
    let max_inputs = caps.max_inputs.max(1);
    let mut requests: Vec<Vec<usize>> = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    let mut current_tokens = 0usize;
    for (i, &t) in tokens.iter().enumerate() {
        let full = current.len() >= max_inputs || current_tokens.saturating_add(t) > caps.max_tokens;
        if full && !current.is_empty() {
            requests.push(std::mem::take(&mut current));
            current_tokens = 0;
        }
        current.push(i);
        current_tokens = current_tokens.saturating_add(t);
    }
    if !current.is_empty() {
        requests.push(current);
    }
    requests
}

/// Splits a refused request (the provider said "too large") into two halves.
pub fn halves<T: Clone>(items: &[T]) -> (Vec<T>, Vec<T>) {
    let mid = items.len().div_ceil(2);
    (items[..mid].to_vec(), items[mid..].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn packs_by_count_and_by_tokens() {
        let caps = PlanCaps { max_inputs: 3, max_tokens: 100 };
        assert_eq!(plan(&[10, 10, 10, 10], caps), vec![vec![0, 1, 2], vec![3]]);
        assert_eq!(plan(&[60, 30, 20, 90, 5], caps), vec![vec![0, 1], vec![2], vec![3, 4]]);
        assert_eq!(plan(&[], caps), Vec::<Vec<usize>>::new());
        // An oversized item goes alone instead of being lost.
        assert_eq!(plan(&[5, 500, 5], caps), vec![vec![0], vec![1], vec![2]]);
    }

    #[test]
    fn halves_split_evenly_with_the_odd_one_first() {
        assert_eq!(halves(&[1, 2, 3]), (vec![1, 2], vec![3]));
        assert_eq!(halves(&[1, 2]), (vec![1], vec![2]));
    }

    proptest! {
        #[test]
        fn planning_never_loses_duplicates_or_oversizes_a_job(
            tokens in proptest::collection::vec(0usize..5000, 0..300),
            max_inputs in 1usize..64,
            max_tokens in 1usize..20_000,
        ) {
            let caps = PlanCaps { max_inputs, max_tokens };
            let requests = plan(&tokens, caps);
            let flat: Vec<usize> = requests.iter().flatten().copied().collect();
            // Every job exactly once, in claim order.
            prop_assert_eq!(flat, (0..tokens.len()).collect::<Vec<_>>());
            for r in &requests {
                prop_assert!(!r.is_empty());
                prop_assert!(r.len() <= max_inputs);
                let sum: usize = r.iter().map(|&i| tokens[i]).sum();
                // Over the token cap only when a single job alone is over it.
                prop_assert!(sum <= max_tokens || r.len() == 1, "{:?} = {} tokens", r, sum);
            }
            // Greedy packing wastes nothing: no two neighbouring requests would fit in one.
            for w in requests.windows(2) {
                let a: usize = w[0].iter().map(|&i| tokens[i]).sum();
                let b = tokens[w[1][0]];
                prop_assert!(w[0].len() == max_inputs || a + b > max_tokens);
            }
        }
    }
}
