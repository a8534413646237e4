//! Batching for training: length-sorted buckets, shuffled between buckets,
//! padding only to each batch's longest member.
//!
//! Sorting by length keeps padding small; shuffling the order of the buckets
//! (and the examples inside equal-length runs) keeps the gradient noise of
//! random batches. A token budget bounds `batch × longest input`, so batches of
//! short inputs hold more examples.

use crate::rng::Rng;

/// How batches are sized.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BatchSize {
    /// A fixed number of examples per batch.
    Examples(usize),
    /// At most this many padded input tokens per batch.
    Tokens(usize),
}

/// Splits `lengths` (input length of each example) into batches of indices
/// for one epoch. Examples are shuffled, sorted by length within windows of
/// `bucket_window` batches' worth, cut into batches, and the batches shuffled.
pub fn epoch_batches(
    lengths: &[usize],
    size: BatchSize,
    shuffle: bool,
    rng: &mut Rng,
) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    if shuffle {
        rng.shuffle(&mut order);
    }
    // Sort in large windows: enough to group similar lengths, not the whole set,
    // so epochs still differ in which examples share a batch.
    let window = match size {
        BatchSize::Examples(b) => b.max(1) * 50,
        BatchSize::Tokens(t) => (t / lengths.iter().copied().max().unwrap_or(1).max(1)).max(1) * 50,
    };
    for chunk in order.chunks_mut(window) {
        chunk.sort_by_key(|&i| lengths[i]);
    }
    let mut batches = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    let mut longest = 0usize;
    for &i in &order {
        let l = lengths[i].max(1);
        let full = match size {
            BatchSize::Examples(b) => current.len() >= b.max(1),
            BatchSize::Tokens(t) => !current.is_empty() && (current.len() + 1) * longest.max(l) > t,
        };
        if full {
            batches.push(std::mem::take(&mut current));
            longest = 0;
        }
        longest = longest.max(l);
        current.push(i);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    if shuffle {
        rng.shuffle(&mut batches);
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_example_once_and_budget_respected() {
        let mut rng = Rng::new(1);
        let lengths: Vec<usize> = (0..1000).map(|_| 5 + rng.below(200) as usize).collect();
        for size in [BatchSize::Examples(16), BatchSize::Tokens(2048)] {
            let batches = epoch_batches(&lengths, size, true, &mut rng);
            let mut seen: Vec<usize> = batches.iter().flatten().copied().collect();
            seen.sort();
            assert_eq!(seen, (0..1000).collect::<Vec<_>>());
            for b in &batches {
                let longest = b.iter().map(|&i| lengths[i]).max().unwrap();
                match size {
                    BatchSize::Examples(n) => assert!(b.len() <= n),
                    BatchSize::Tokens(t) => assert!(b.len() == 1 || b.len() * longest <= t),
                }
            }
            // Bucketing keeps padding well below random batching's.
            let padded: usize = batches
                .iter()
                .map(|b| b.len() * b.iter().map(|&i| lengths[i]).max().unwrap())
                .sum();
            let real: usize = lengths.iter().sum();
            assert!(
                (padded as f64) < 1.2 * real as f64,
                "padding overhead {padded} vs {real}"
            );
        }
    }
}
