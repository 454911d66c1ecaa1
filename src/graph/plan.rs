//! Memory planning: assigns every value to a pooled buffer ("slot") by liveness, so a buffer is
//! reused as soon as the value in it is dead.
//!
//! A value is live from the step that produces it to its last use; graph outputs stay live to
//! the end. Values are placed greedily, each into the smallest slot whose values' lifetimes do
//! not overlap its own (else the largest such slot, grown; else a new one), in a few orders
//! (largest first, longest-lived first, execution order); the plan with the smallest total wins. An op's output is live at its step, as are its inputs, so an op
//! never writes a buffer it reads.

/// Where each value lives and how large each pooled buffer is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryPlan {
    /// The slot of each value.
    pub slot_of: Vec<usize>,
    /// The byte size of each slot (the largest value it ever holds).
    pub slot_bytes: Vec<u64>,
    /// The largest total of bytes live at any one step: no plan can use less.
    pub lower_bound: u64,
}

impl MemoryPlan {
    /// Total bytes of all slots.
    pub fn total_bytes(&self) -> u64 {
        self.slot_bytes.iter().sum()
    }
}

/// Plans memory for values `0..sizes.len()` produced in order, where `inputs[i]` are the values
/// node `i` reads and `outputs` must survive to the end.
pub fn plan_memory(sizes: &[u64], inputs: &[Vec<usize>], outputs: &[usize]) -> MemoryPlan {
    let n = sizes.len();
    // Lifetime of value v: steps v..=last_use[v]; a value nobody reads dies where it is made.
    let mut last_use: Vec<usize> = (0..n).collect();
    for (i, ins) in inputs.iter().enumerate() {
        for &v in ins {
            last_use[v] = last_use[v].max(i);
        }
    }
    for &v in outputs {
        last_use[v] = n;
    }

    let mut live_at = vec![0u64; n + 1];
    for v in 0..n {
        for step in live_at.iter_mut().take(last_use[v] + 1).skip(v) {
            *step += sizes[v];
        }
    }
    let lower_bound = live_at.iter().copied().max().unwrap_or(0);

    // Several orders, one rule; the smallest plan wins (planning is cheap next to a forward).
    let life = |v: usize| last_use[v] - v;
    let mut by_size: Vec<usize> = (0..n).collect();
    by_size.sort_by_key(|&v| (std::cmp::Reverse(sizes[v]), v));
    let mut by_size_then_life: Vec<usize> = (0..n).collect();
    by_size_then_life
        .sort_by_key(|&v| (std::cmp::Reverse(sizes[v]), std::cmp::Reverse(life(v)), v));
    let mut by_life: Vec<usize> = (0..n).collect();
    by_life.sort_by_key(|&v| (std::cmp::Reverse(life(v)), std::cmp::Reverse(sizes[v]), v));
    let in_order: Vec<usize> = (0..n).collect();
    let orders = [by_size, by_size_then_life, by_life, in_order];
    let (slot_of, slot_bytes) = orders
        .iter()
        .flat_map(|order| [Fit::Best, Fit::Closest].map(|fit| assign(order, sizes, &last_use, fit)))
        .min_by_key(|(_, bytes)| bytes.iter().sum::<u64>())
        .unwrap_or_default();
    MemoryPlan {
        slot_of,
        slot_bytes,
        lower_bound,
    }
}

/// How [`assign`] picks among the slots free for a value's lifetime.
#[derive(Clone, Copy)]
enum Fit {
    /// The smallest slot large enough, else the largest slot (grown).
    Best,
    /// The slot closest in size, grown if smaller.
    Closest,
}

/// Places values in `order`, each into a slot that holds no value alive at the same time (chosen
/// as `fit` says), else a new slot.
fn assign(order: &[usize], sizes: &[u64], last_use: &[usize], fit: Fit) -> (Vec<usize>, Vec<u64>) {
    let mut slot_of = vec![usize::MAX; sizes.len()];
    let mut slot_bytes: Vec<u64> = Vec::new();
    let mut slot_values: Vec<Vec<usize>> = Vec::new();
    for &v in order {
        let overlaps = |&u: &usize| v <= last_use[u] && u <= last_use[v];
        let free: Vec<usize> = (0..slot_bytes.len())
            .filter(|&s| !slot_values[s].iter().any(overlaps))
            .collect();
        let pick = match fit {
            Fit::Best => free
                .iter()
                .copied()
                .filter(|&s| slot_bytes[s] >= sizes[v])
                .min_by_key(|&s| slot_bytes[s])
                .or_else(|| free.iter().copied().max_by_key(|&s| slot_bytes[s])),
            Fit::Closest => free
                .iter()
                .copied()
                .min_by_key(|&s| slot_bytes[s].abs_diff(sizes[v])),
        };
        let slot = pick.unwrap_or_else(|| {
            slot_bytes.push(0);
            slot_values.push(Vec::new());
            slot_bytes.len() - 1
        });
        slot_bytes[slot] = slot_bytes[slot].max(sizes[v]);
        slot_values[slot].push(v);
        slot_of[v] = slot;
    }
    (slot_of, slot_bytes)
}

#[cfg(test)]
mod tests {
    use super::plan_memory;

    /// Checks that no two values whose lifetimes overlap share a slot, and that every slot
    /// holds its values.
    fn check_no_overlap(sizes: &[u64], inputs: &[Vec<usize>], outputs: &[usize]) {
        let plan = plan_memory(sizes, inputs, outputs);
        let n = sizes.len();
        let mut last = (0..n).collect::<Vec<_>>();
        for (i, ins) in inputs.iter().enumerate() {
            for &v in ins {
                last[v] = last[v].max(i);
            }
        }
        for &o in outputs {
            last[o] = n;
        }
        for a in 0..n {
            assert!(plan.slot_bytes[plan.slot_of[a]] >= sizes[a]);
            for b in a + 1..n {
                // b is made at step b; a is still live then if last[a] >= b.
                if last[a] >= b {
                    assert_ne!(
                        plan.slot_of[a], plan.slot_of[b],
                        "values {a} and {b} overlap"
                    );
                }
            }
        }
        assert!(plan.total_bytes() >= plan.lower_bound);
    }

    #[test]
    fn a_chain_needs_two_buffers() {
        let sizes = [10, 10, 10, 10, 10];
        let inputs = vec![vec![], vec![0], vec![1], vec![2], vec![3]];
        let plan = plan_memory(&sizes, &inputs, &[4]);
        assert_eq!(plan.slot_bytes.len(), 2);
        assert_eq!(plan.lower_bound, 20);
        check_no_overlap(&sizes, &inputs, &[4]);
    }

    #[test]
    fn residual_branches_and_outputs_never_share_live_buffers() {
        // 0 -> 1 -> 2, 0 -> 3, add(2, 3) -> 4, 4 -> 5 (output), 4 -> 6 (output)
        let sizes = [8, 4, 4, 16, 16, 2, 3];
        let inputs = vec![
            vec![],
            vec![0],
            vec![1],
            vec![0],
            vec![2, 3],
            vec![4],
            vec![4],
        ];
        check_no_overlap(&sizes, &inputs, &[5, 6]);
        let plan = plan_memory(&sizes, &inputs, &[5, 6]);
        assert!(plan.total_bytes() as f64 <= 1.5 * plan.lower_bound as f64);
    }
}
