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
use crate::graph::Value;
use crate::kernels::indirect_grid;
use crate::tensor::Tensor;

/// One node's launches as prepared at full size, with what sizes them.
pub(crate) struct NodeLaunches<'a> {
    /// The node's name, for errors.
    pub name: &'a str,
    pub launches: Vec<Dispatch>,
    /// The node's output: its leading dimension must be the records' rows.
    pub out: &'a Tensor,
    /// The records value whose live rows size the launches, and its tensor (`None`: full
    /// size). Grouped by value: two values may share memory at different times.
    pub rows: Option<(Value, &'a Tensor)>,
}

/// Makes the launches of every node sized by rows indirect, where the device and the kernels
/// allow it. Returns, per node, the launch that writes the grids and must be recorded just
/// before the node's own launches (for the first node sized by each records value). A node
/// whose output does not have a row per record, or a launch whose grid does not follow its
/// batch as it says, is an error on every device.
pub(crate) fn size_by_rows(
    ctx: &GpuContext,
    nodes: &mut [NodeLaunches<'_>],
) -> Result<Vec<Option<Dispatch>>> {
    let max = ctx.limits().max_compute_workgroups_per_dimension;
    for node in nodes.iter() {
        let Some((_, records)) = node.rows else {
            continue;
        };
        let [n, _, d, _] = records.shape();
        let rows = n * d;
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
            let (Some(batch), full) = (launch.batch(), launch.workgroups()) else {
                continue;
            };
            let at_full = batch.grid(full, rows as u32, max);
            if at_full != full {
                return Err(Error::invalid(
                    "graph",
                    format!(
                        "node `{}`: launch `{}` of grid {full:?} says its grid follows the batch as {batch:?}, which gives {at_full:?} for all {rows} rows",
                        node.name,
                        launch.label(),
                    ),
                ));
            }
        }
    }
    let mut grids: Vec<Option<Dispatch>> = (0..nodes.len()).map(|_| None).collect();
    if !ctx.supports_indirect_dispatch() {
        return Ok(grids);
    }
    let mut done: Vec<Value> = Vec::new();
    for first in 0..nodes.len() {
        let Some((value, records)) = nodes[first].rows else {
            continue;
        };
        if done.contains(&value) {
            continue;
        }
        done.push(value);
        let group: Vec<usize> = (first..nodes.len())
            .filter(|&i| nodes[i].rows.is_some_and(|(v, _)| v == value))
            .collect();
        let launches = group.iter().flat_map(|&i| &nodes[i].launches);
        let rules: Option<Vec<(BatchGrid, [u32; 3])>> = launches
            .map(|l| l.batch().map(|b| (b, l.workgroups())))
            .collect();
        let Some(rules) = rules.filter(|r| !r.is_empty()) else {
            log::debug!(
                "the launches sized by `{}`'s rows run at full size: a kernel among them cannot be cut by rows",
                nodes[first].name
            );
            continue;
        };
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
