//! Memory planning: places every value at an offset in one of a few pooled buffers ("arenas")
//! by liveness, so that its bytes are reused as soon as it is dead.
//!
//! A value is live from the step that produces it to its last use; graph outputs stay live to
//! the end. Two values live at the same time never overlap. A node's output never shares an
//! arena with the node's inputs: wgpu tracks usage per buffer, and a buffer bound both read-only
//! and read-write in one dispatch is a validation error whatever the ranges. Within those rules
//! values are placed greedily (lowest free offset in the arena that grows least), in several
//! orders; the plan with the smallest total wins.

/// Where each value lives and how large each pooled buffer is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryPlan {
    /// The arena of each value.
    pub arena_of: Vec<usize>,
    /// The byte offset of each value in its arena (a multiple of the alignment).
    pub offset_of: Vec<u64>,
    /// The byte size of each arena.
    pub arena_bytes: Vec<u64>,
    /// The largest total of bytes live at any one step: no plan can use less.
    pub lower_bound: u64,
}

impl MemoryPlan {
    /// Total bytes of all arenas.
    pub fn total_bytes(&self) -> u64 {
        self.arena_bytes.iter().sum()
    }
}

/// The values, their lifetimes and the rules a placement must keep.
struct Problem<'a> {
    sizes: Vec<u64>,
    last_use: Vec<usize>,
    inputs: &'a [Vec<usize>],
    /// The nodes that read each value.
    readers: Vec<Vec<usize>>,
    align: u64,
    max_arena: u64,
}

/// Plans memory for values `0..sizes.len()` produced in order, where `inputs[i]` are the values
/// node `i` reads and `outputs` must survive to the end. Offsets are multiples of `align` (the
/// device's storage offset alignment); no arena exceeds `max_arena` bytes unless a single value
/// does.
pub fn plan_memory(
    sizes: &[u64],
    inputs: &[Vec<usize>],
    outputs: &[usize],
    align: u64,
    max_arena: u64,
) -> MemoryPlan {
    let n = sizes.len();
    // Lifetime of value v: steps v..=last_use[v]; a value nobody reads dies where it is made.
    let mut last_use: Vec<usize> = (0..n).collect();
    let mut readers = vec![Vec::new(); n];
    for (i, ins) in inputs.iter().enumerate() {
        for &v in ins {
            last_use[v] = last_use[v].max(i);
            readers[v].push(i);
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

    let align = align.max(1);
    let problem = Problem {
        sizes: sizes.iter().map(|&s| s.div_ceil(align) * align).collect(),
        last_use,
        inputs,
        readers,
        align,
        max_arena,
    };
    // Several orders, one rule; the smallest plan wins (planning is cheap next to a forward).
    let sizes = &problem.sizes;
    let life = |v: usize| problem.last_use[v] - v;
    let mut by_size: Vec<usize> = (0..n).collect();
    by_size.sort_by_key(|&v| (std::cmp::Reverse(sizes[v]), v));
    let mut by_size_then_life: Vec<usize> = (0..n).collect();
    by_size_then_life
        .sort_by_key(|&v| (std::cmp::Reverse(sizes[v]), std::cmp::Reverse(life(v)), v));
    let mut by_life: Vec<usize> = (0..n).collect();
    by_life.sort_by_key(|&v| (std::cmp::Reverse(life(v)), std::cmp::Reverse(sizes[v]), v));
    let mut by_area: Vec<usize> = (0..n).collect();
    by_area.sort_by_key(|&v| (std::cmp::Reverse(sizes[v] * (life(v) as u64 + 1)), v));
    let in_order: Vec<usize> = (0..n).collect();
    let orders = [by_size, by_size_then_life, by_life, by_area, in_order];
    let (arena_of, offset_of, arena_bytes) = orders
        .iter()
        .flat_map(|order| [2, 3].map(|arenas| problem.place(order, arenas)))
        .min_by_key(|(_, _, bytes)| bytes.iter().sum::<u64>())
        .unwrap_or_default();
    MemoryPlan {
        arena_of,
        offset_of,
        arena_bytes,
        lower_bound,
    }
}

impl Problem<'_> {
    /// Places values in `order`, starting with `initial` empty arenas (more are opened when
    /// none may take a value).
    fn place(&self, order: &[usize], initial: usize) -> (Vec<usize>, Vec<u64>, Vec<u64>) {
        let n = self.sizes.len();
        let mut arena_of = vec![usize::MAX; n];
        let mut offset_of = vec![0u64; n];
        let mut arena_bytes = vec![0u64; initial];
        let mut placed: Vec<Vec<usize>> = vec![Vec::new(); initial];
        for &v in order {
            let size = self.sizes[v];
            // Arenas holding a value this one is computed from, or one computed from it, are
            // ruled out.
            let mut banned = vec![false; arena_bytes.len()];
            for &u in self.inputs[v].iter().chain(&self.readers[v]) {
                if arena_of[u] != usize::MAX {
                    banned[arena_of[u]] = true;
                }
            }
            let mut best: Option<(u64, usize, u64)> = None; // (growth, arena, offset)
            for a in 0..arena_bytes.len() {
                if banned[a] {
                    continue;
                }
                let offset = self.lowest_free_offset(v, &placed[a], &offset_of);
                let end = offset + size;
                if end > self.max_arena && offset > 0 {
                    continue;
                }
                let growth = end.saturating_sub(arena_bytes[a]);
                if best.is_none_or(|(g, _, o)| (growth, offset) < (g, o)) {
                    best = Some((growth, a, offset));
                }
            }
            let (arena, offset) = match best {
                Some((_, a, o)) => (a, o),
                None => {
                    arena_bytes.push(0);
                    placed.push(Vec::new());
                    (arena_bytes.len() - 1, 0)
                }
            };
            arena_of[v] = arena;
            offset_of[v] = offset;
            arena_bytes[arena] = arena_bytes[arena].max(offset + size);
            placed[arena].push(v);
        }
        // Arenas nothing landed in are not allocated.
        let used: Vec<usize> = (0..arena_bytes.len())
            .filter(|&a| !placed[a].is_empty())
            .collect();
        let renumber = |a: usize| used.iter().position(|&u| u == a).unwrap_or(0);
        let arena_of = arena_of.into_iter().map(renumber).collect();
        let arena_bytes = used.iter().map(|&a| arena_bytes[a]).collect();
        (arena_of, offset_of, arena_bytes)
    }

    /// The lowest aligned offset where `v` fits between the values of `placed` that are live at
    /// the same time as it.
    fn lowest_free_offset(&self, v: usize, placed: &[usize], offset_of: &[u64]) -> u64 {
        let mut busy: Vec<(u64, u64)> = placed
            .iter()
            .filter(|&&u| v <= self.last_use[u] && u <= self.last_use[v])
            .map(|&u| (offset_of[u], offset_of[u] + self.sizes[u]))
            .collect();
        busy.sort_unstable();
        let mut offset = 0u64;
        for (start, end) in busy {
            if offset + self.sizes[v] <= start {
                break;
            }
            offset = offset.max(end.div_ceil(self.align) * self.align);
        }
        offset
    }
}

#[cfg(test)]
mod tests {
    use super::{plan_memory, MemoryPlan};

    const ALIGN: u64 = 4;

    /// Plans and checks the rules: values live at the same time never overlap, a node's output
    /// never shares an arena with its inputs, offsets are aligned, every value fits its arena.
    fn checked_plan(sizes: &[u64], inputs: &[Vec<usize>], outputs: &[usize]) -> MemoryPlan {
        let plan = plan_memory(sizes, inputs, outputs, ALIGN, u64::MAX);
        let n = sizes.len();
        let mut last = (0..n).collect::<Vec<_>>();
        for (i, ins) in inputs.iter().enumerate() {
            for &v in ins {
                last[v] = last[v].max(i);
                assert_ne!(
                    plan.arena_of[v], plan.arena_of[i],
                    "node {i} writes the arena of its input {v}"
                );
            }
        }
        for &o in outputs {
            last[o] = n;
        }
        for a in 0..n {
            assert_eq!(plan.offset_of[a] % ALIGN, 0);
            assert!(plan.offset_of[a] + sizes[a] <= plan.arena_bytes[plan.arena_of[a]]);
            for b in a + 1..n {
                // b is made at step b; a is still live then if last[a] >= b.
                let disjoint = plan.offset_of[a] + sizes[a] <= plan.offset_of[b]
                    || plan.offset_of[b] + sizes[b] <= plan.offset_of[a];
                if last[a] >= b && plan.arena_of[a] == plan.arena_of[b] {
                    assert!(disjoint, "values {a} and {b} overlap");
                }
            }
        }
        assert!(plan.total_bytes() >= plan.lower_bound);
        plan
    }

    #[test]
    fn a_chain_needs_two_buffers() {
        let sizes = [12, 12, 12, 12, 12];
        let inputs = vec![vec![], vec![0], vec![1], vec![2], vec![3]];
        let plan = checked_plan(&sizes, &inputs, &[4]);
        assert_eq!(plan.arena_bytes, vec![12, 12]);
        assert_eq!(plan.lower_bound, 24);
    }

    #[test]
    fn residual_branches_and_outputs_never_share_live_bytes() {
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
        let plan = checked_plan(&sizes, &inputs, &[5, 6]);
        assert!(plan.total_bytes() as f64 <= 1.5 * plan.lower_bound as f64);
    }

    #[test]
    fn small_values_share_an_arena_with_a_large_one_when_their_lives_allow() {
        // A large value alive throughout, two small chains beside it: offsets let the small ones
        // pack into one arena instead of each taking a buffer of its own.
        let sizes = [64, 8, 8, 8, 8, 64];
        let inputs = vec![vec![], vec![0], vec![1], vec![2], vec![3], vec![4, 0]];
        let plan = checked_plan(&sizes, &inputs, &[5]);
        assert_eq!(plan.lower_bound, 64 + 64 + 8);
        assert!(plan.total_bytes() <= 64 + 64 + 16, "{plan:?}");
    }

    #[test]
    fn offsets_are_aligned_and_arenas_respect_the_cap() {
        let sizes = [10, 10, 10, 10];
        let inputs = vec![vec![], vec![0], vec![0, 1], vec![0, 1, 2]];
        let plan = plan_memory(&sizes, &inputs, &[3], 256, 300);
        for a in 0..4 {
            assert_eq!(plan.offset_of[a] % 256, 0);
        }
        assert!(plan.arena_bytes.iter().all(|&b| b <= 300), "{plan:?}");
    }
}
