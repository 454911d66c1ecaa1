//! Memory planning: assigns every value to a pooled buffer ("slot") by liveness, so a buffer is
//! reused as soon as the value in it is dead.
//!
//! A value is live from the step that produces it to its last use; graph outputs stay live to
//! the end. Slots are chosen greedily: the smallest free slot that is large enough, else the
//! largest free slot grown to fit, else a new slot. A node's output is placed before its dead
//! inputs are released, so an op never writes the buffer it reads.

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
    let end = n; // a step after the last node
                 // The step of each value's last use; a value nobody reads dies where it is made.
    let mut last_use: Vec<usize> = (0..n).collect();
    for (i, ins) in inputs.iter().enumerate() {
        for &v in ins {
            last_use[v] = last_use[v].max(i);
        }
    }
    for &v in outputs {
        last_use[v] = end;
    }

    let mut dying_at: Vec<Vec<usize>> = vec![Vec::new(); n + 1];
    for (v, &step) in last_use.iter().enumerate() {
        dying_at[step].push(v);
    }

    let mut slot_of = vec![usize::MAX; n];
    let mut slot_bytes: Vec<u64> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut live_bytes = 0u64;
    let mut lower_bound = 0u64;
    for step in 0..n {
        let need = sizes[step];
        let fit = free
            .iter()
            .enumerate()
            .filter(|&(_, &s)| slot_bytes[s] >= need)
            .min_by_key(|&(_, &s)| slot_bytes[s])
            .map(|(i, _)| i);
        let pick = fit.or_else(|| {
            free.iter()
                .enumerate()
                .max_by_key(|&(_, &s)| slot_bytes[s])
                .map(|(i, _)| i)
        });
        let slot = match pick {
            Some(i) => free.swap_remove(i),
            None => {
                slot_bytes.push(0);
                slot_bytes.len() - 1
            }
        };
        slot_bytes[slot] = slot_bytes[slot].max(need);
        slot_of[step] = slot;
        live_bytes += need;
        lower_bound = lower_bound.max(live_bytes);
        for &v in &dying_at[step] {
            free.push(slot_of[v]);
            live_bytes -= sizes[v];
        }
    }
    MemoryPlan {
        slot_of,
        slot_bytes,
        lower_bound,
    }
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
