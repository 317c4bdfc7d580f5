//! The order in which variants run: interleaved within each repetition, counterbalanced.

use serde::{Deserialize, Serialize};

use crate::rng::Rng;

/// One measured run: a variant in a repetition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slot {
    /// The repetition, from 0.
    pub repetition: u32,
    /// The variant's index in the scenario's list of variants.
    pub variant: usize,
}

/// The runs of `variants` variants over `repetitions` repetitions, in the order to run them.
///
/// Every repetition runs each variant once. Repetitions go in pairs: the first of a pair runs
/// the variants in an order shuffled with `seed`, the second in the reverse order, so with two
/// variants A and B a pair is `AB BA` or `BA AB` (an ABBA design: drifts over time, such as a
/// warming cache, weigh on every variant alike). Each pair draws a new order. The result
/// depends only on the arguments.
pub fn schedule(seed: u64, repetitions: u32, variants: usize) -> Vec<Slot> {
    let mut rng = Rng::new(seed);
    let mut order: Vec<usize> = (0..variants).collect();
    let mut slots = Vec::with_capacity(repetitions as usize * variants);
    for repetition in 0..repetitions {
        if repetition % 2 == 0 {
            order.sort_unstable();
            rng.shuffle(&mut order);
        } else {
            order.reverse();
        }
        slots.extend(order.iter().map(|&variant| Slot {
            repetition,
            variant,
        }));
    }
    slots
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letters(slots: &[Slot]) -> String {
        slots
            .chunks(2)
            .map(|pair| {
                pair.iter()
                    .map(|s| char::from(b'A' + s.variant as u8))
                    .collect::<String>()
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn same_seed_same_schedule() {
        for seed in 0..20 {
            assert_eq!(schedule(seed, 7, 3), schedule(seed, 7, 3));
        }
    }

    #[test]
    fn seeds_change_the_order() {
        let distinct: std::collections::HashSet<_> =
            (0..20).map(|seed| letters(&schedule(seed, 8, 2))).collect();
        assert!(distinct.len() > 1);
    }

    #[test]
    fn every_repetition_runs_every_variant_once() {
        let slots = schedule(9, 5, 4);
        assert_eq!(slots.len(), 20);
        for repetition in 0..5 {
            let mut seen: Vec<usize> = slots
                .iter()
                .filter(|s| s.repetition == repetition)
                .map(|s| s.variant)
                .collect();
            seen.sort_unstable();
            assert_eq!(seen, [0, 1, 2, 3]);
        }
    }

    #[test]
    fn pairs_of_repetitions_are_mirrored() {
        for seed in 0..20 {
            let text = letters(&schedule(seed, 4, 2));
            let pairs: Vec<&str> = text.split(' ').collect();
            assert_eq!(pairs.len(), 4);
            for pair in pairs.chunks(2) {
                let reversed: String = pair[0].chars().rev().collect();
                assert_eq!(pair[1], reversed, "{text}");
            }
        }
    }

    #[test]
    fn degenerate_sizes() {
        assert!(schedule(1, 0, 2).is_empty());
        assert!(schedule(1, 3, 0).is_empty());
        assert_eq!(
            schedule(1, 1, 1),
            [Slot {
                repetition: 0,
                variant: 0
            }]
        );
    }
}
