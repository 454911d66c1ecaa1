//! Launches sized on the GPU by a count of live rows: where a graph marks nodes with
//! [`Graph::set_rows`](super::Graph::set_rows) (Mask R-CNN's mask branch, on the detections
//! kept out of `N * D` slots), their launches are recorded with `dispatch_workgroups_indirect`,
//! and one small launch before the first of them writes their grids from the count of live
//! records ([`crate::kernels::indirect_grid`]). The counts never leave the GPU, and the
//! forward stays one submit.
//!
//! Each launch says how its grid follows its output's batch ([`BatchGrid`]); a group of
//! launches with one that does not say, or a device without indirect launches, runs at full
//! size, which computes the same live rows and more.

use crate::error::{Error, Result};
use crate::gpu::{BatchGrid, Dispatch, GpuContext, IndirectGrid};
use crate::kernels::indirect_grid;
use crate::tensor::Tensor;

/// One node's launches as prepared at full size, with what sizes them.
pub(crate) struct NodeLaunches<'a> {
    /// The node's name, for errors.
    pub name: &'a str,
    pub launches: Vec<Dispatch>,
    /// The node's output: its leading dimension must be the records' rows.
    pub out: &'a Tensor,
    /// The records whose live rows size the launches (`None`: full size).
    pub rows: Option<&'a Tensor>,
}

/// Makes the launches of every node sized by rows indirect, where the device and the kernels
/// allow it. Returns, per node, the launch that writes the grids and must be recorded just
/// before the node's own launches (for the first node sized by each records tensor).
pub(crate) fn size_by_rows(
    ctx: &GpuContext,
    nodes: &mut [NodeLaunches<'_>],
) -> Result<Vec<Option<Dispatch>>> {
    let mut grids: Vec<Option<Dispatch>> = (0..nodes.len()).map(|_| None).collect();
    if !ctx.supports_indirect_dispatch() {
        return Ok(grids);
    }
    let max = ctx.limits().max_compute_workgroups_per_dimension;
    let same = |a: &Tensor, b: &Tensor| a.buffer() == b.buffer() && a.offset() == b.offset();
    let mut done: Vec<&Tensor> = Vec::new();
    for first in 0..nodes.len() {
        let Some(records) = nodes[first].rows else {
            continue;
        };
        if done.iter().any(|d| same(d, records)) {
            continue;
        }
        done.push(records);
        let [n, _, d, _] = records.shape();
        let rows = n * d;
        let group: Vec<usize> = (first..nodes.len())
            .filter(|&i| nodes[i].rows.is_some_and(|r| same(r, records)))
            .collect();
        let mut rules: Vec<(BatchGrid, [u32; 3])> = Vec::new();
        let mut whole = true;
        for &i in &group {
            let node = &nodes[i];
            if node.out.shape()[0] != rows {
                return Err(Error::invalid(
                    "graph",
                    format!(
                        "node `{}` writes {:?} but is sized by {rows} rows of records; its output's leading dimension must be those rows",
                        node.name,
                        node.out.shape()
                    ),
                ));
            }
            for launch in &node.launches {
                let Some(batch) = launch.batch() else {
                    whole = false;
                    continue;
                };
                let full = launch.workgroups();
                if batch.grid(full, rows as u32, max) != full {
                    return Err(Error::invalid(
                        "graph",
                        format!(
                            "node `{}`: launch `{}` of grid {full:?} says its grid follows the batch as {batch:?}, which gives {:?} for all {rows} rows",
                            node.name,
                            launch.label(),
                            batch.grid(full, rows as u32, max)
                        ),
                    ));
                }
                rules.push((batch, full));
            }
        }
        if !whole || rules.is_empty() {
            log::debug!(
                "the launches sized by `{}`'s rows run at full size: a kernel among them cannot be cut by rows",
                nodes[first].name
            );
            continue;
        }
        let args = ctx.indirect_buffer("indirect grids", 3 * rules.len());
        let mut slot = 0u64;
        for &i in &group {
            for launch in &mut nodes[i].launches {
                launch.indirect = Some(IndirectGrid {
                    buffer: args.clone(),
                    offset: 12 * slot,
                });
                slot += 1;
            }
        }
        grids[first] = Some(indirect_grid::prepare(ctx, records, &rules, &args)?);
    }
    Ok(grids)
}
