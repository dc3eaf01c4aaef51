//! Groups a request's texts by length before the forward pass. Padded rows cost as much as
//! real ones (and attention grows with length²), so one 219-token text among thirty-one
//! 18-token texts would otherwise cost thirty-two 219-token rows. Groups are also capped in
//! padded tokens: past a few thousand tokens per pass throughput falls on both engines (32
//! long texts in one pass ran 14–16 % slower than in passes of 8, see BENCHMARKS.md) while
//! peak memory keeps growing with the pass (426 MiB against 224).

/// Padded tokens a group may hold per real token before a longer text starts a new group:
/// a little padding is cheaper than a second, smaller forward pass.
const MAX_PADDING_RATIO: f64 = 1.25;

/// Padded tokens one forward pass may hold (batch × longest): 8 texts of 219 tokens, 113 of 18.
pub const MAX_PASS_TOKENS: usize = 2048;

/// Indices into `lens`, in groups of similar length (shortest first) of at most
/// [`MAX_PASS_TOKENS`] padded tokens (a longer single text is a group of its own); every
/// index appears exactly once. Within a group the cost is `group size × longest`.
pub fn by_length(lens: &[usize]) -> Vec<Vec<usize>> {
    by_padding(lens).into_iter().flat_map(|g| split_to_cap(g, lens)).collect()
}

/// Cuts a group into the fewest nearly equal parts that each fit [`MAX_PASS_TOKENS`], so
/// 32 long texts become 4 passes of 8 rather than 9 + 9 + 9 + 5.
fn split_to_cap(group: Vec<usize>, lens: &[usize]) -> Vec<Vec<usize>> {
    let longest = group.iter().map(|&i| lens[i].max(1)).max().unwrap_or(1);
    let per_pass = (MAX_PASS_TOKENS / longest).max(1);
    let parts = group.len().div_ceil(per_pass);
    if parts <= 1 {
        return vec![group];
    }
    let size = group.len().div_ceil(parts);
    group.chunks(size).map(<[usize]>::to_vec).collect()
}

/// Sorts by length and starts a new group where padding would exceed [`MAX_PADDING_RATIO`].
fn by_padding(lens: &[usize]) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lens.len()).collect();
    order.sort_by_key(|&i| lens[i]);
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut real = 0usize;
    for i in order {
        let len = lens[i].max(1);
        let fits = groups.last().is_some_and(|g| {
            // Sorted ascending: `len` becomes the group's longest.
            let padded = (g.len() + 1) * len;
            padded as f64 <= MAX_PADDING_RATIO * (real + len) as f64
        });
        match groups.last_mut() {
            Some(g) if fits => {
                real += len;
                g.push(i);
            }
            _ => {
                real = len;
                groups.push(vec![i]);
            }
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_lengths_stay_one_group() {
        assert_eq!(by_length(&[18; 32]), vec![(0..32).collect::<Vec<_>>()]);
    }

    #[test]
    fn one_long_text_does_not_pad_the_short_ones() {
        let mut lens = vec![18; 31];
        lens.insert(5, 219);
        let groups = by_length(&lens);
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[1], vec![5]);
        assert_eq!(groups[0].len(), 31);
    }

    #[test]
    fn every_index_appears_once_and_padding_stays_bounded() {
        let lens: Vec<usize> = (0..100).map(|i| (i * 37) % 250 + 3).collect();
        let groups = by_length(&lens);
        let mut seen: Vec<usize> = groups.iter().flatten().copied().collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..100).collect::<Vec<_>>());
        for g in &groups {
            let longest = g.iter().map(|&i| lens[i]).max().unwrap();
            let real: usize = g.iter().map(|&i| lens[i]).sum();
            assert!((g.len() * longest) as f64 <= MAX_PADDING_RATIO * real as f64 || g.len() == 1);
        }
        assert!(by_length(&[]).is_empty());
    }

    #[test]
    fn a_pass_holds_at_most_the_token_cap_in_even_parts() {
        let groups = by_length(&[219; 32]);
        assert_eq!(groups.iter().map(Vec::len).collect::<Vec<_>>(), vec![8, 8, 8, 8]);
        for g in by_length(&(0..300).map(|i| i % 256 + 1).collect::<Vec<_>>()) {
            let longest = g.iter().map(|&i| i % 256 + 1).max().unwrap();
            assert!(g.len() * longest <= MAX_PASS_TOKENS, "{} × {longest}", g.len());
        }
        assert_eq!(by_length(&[18; 32]).len(), 1, "32 short texts (576 tokens) stay one pass");
    }
}
