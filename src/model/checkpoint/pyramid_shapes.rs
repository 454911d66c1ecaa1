//! What an FPN's shapes say of it, in any layout: which backbone stage each lateral conv reads,
//! the pyramid's width, and what RetinaNet's P6 conv reads.

use super::refuse;
use crate::error::Result;
use crate::model::config::{ExtraSource, FpnConfig, MAX_WIDTH};
use crate::weights::VarStore;

/// Stages in increasing order, among `candidates`, whose channels are `cins` in order; the stem
/// (stage 0) is tried last.
fn search(
    cins: &[usize],
    config: &FpnConfig,
    candidates: &[usize],
    after: Option<usize>,
) -> Option<Vec<usize>> {
    let Some((&cin, rest)) = cins.split_first() else {
        return Some(Vec::new());
    };
    let mut order: Vec<usize> = candidates.iter().copied().filter(|&s| s > 0).collect();
    order.extend(candidates.iter().copied().filter(|&s| s == 0));
    order.into_iter().find_map(|s| {
        if after.is_some_and(|a| s <= a) || config.stage_channels(s) != cin {
            return None;
        }
        let mut tail = search(rest, config, candidates, Some(s))?;
        tail.insert(0, s);
        Some(tail)
    })
}

/// The backbone stage each lateral conv reads (`laterals`: its weight's name and shape, finest
/// first), from its input channels: stages in increasing order, among `candidates`. The stem
/// and a basic-block `layer1` both have 64 channels; the stem is taken only where nothing else
/// fits (timm's `out_indices` 0..4 give five laterals), and a note says so when it could have
/// been. `framework` says what the file looks like, for the refusal.
pub fn assign_stages(
    store: &VarStore,
    framework: &str,
    laterals: &[(String, Vec<usize>)],
    config: &FpnConfig,
    candidates: &[usize],
) -> Result<(Vec<usize>, Option<String>)> {
    let cins: Vec<usize> = laterals
        .iter()
        .map(|(_, shape)| shape.get(1).copied().unwrap_or(0))
        .collect();
    let Some(stages) = search(&cins, config, candidates, None) else {
        let channels: Vec<String> = candidates
            .iter()
            .map(|&s| format!("C{} {}", s + 1, config.stage_channels(s)))
            .collect();
        let shapes: Vec<String> = laterals
            .iter()
            .map(|(name, shape)| format!("`{name}` {shape:?}"))
            .collect();
        return Err(refuse(
            store,
            framework,
            format!(
                "the lateral convs' input channels match no backbone levels taken from fine to \
                 coarse: {} against the {} ResNet's levels ({}). The FPN was saved with another \
                 backbone than the file's, or the file is damaged",
                shapes.join(", "),
                config.block,
                channels.join(", ")
            ),
        ));
    };
    let stem_fits = candidates.contains(&0) && config.stage_channels(0) == cins[0];
    let note = (stages[0] == 1 && stem_fits).then(|| {
        format!(
            "the first lateral conv reads {} channels: taken as layer1's (C2), not the stem's \
             (C1), which has as many",
            cins[0]
        )
    });
    Ok((stages, note))
}

/// The pyramid's width, from a lateral conv's weight shape; `default` when it has none, or one
/// past any framework's (a broken file, left to the walk to report rather than sized from).
pub fn pyramid_width(lateral: &[usize], default: usize) -> usize {
    lateral
        .first()
        .copied()
        .filter(|c| (1..=MAX_WIDTH).contains(c))
        .unwrap_or(default)
}

/// What RetinaNet's P6 conv `name` (of shape `shape`) reads, from its input channels: P5 (the
/// pyramid's width) or the coarsest backbone level, C5. When both have that many channels,
/// `tie` (the framework's default), and a note says so.
pub fn p6_source(
    store: &VarStore,
    framework: &str,
    (name, shape): (&str, &[usize]),
    config: &FpnConfig,
    top: usize,
    tie: ExtraSource,
) -> Result<(ExtraSource, Option<String>)> {
    let cin = shape.get(1).copied().unwrap_or(0);
    let c_top = config.stage_channels(top);
    match (cin == config.pyramid_channels, cin == c_top) {
        (true, true) => Ok((
            tie,
            Some(format!(
                "`{name}` reads {cin} channels, as many as P{0} and C{0} have: taken as {1}, \
                 the framework's default",
                top + 1,
                tie.name()
            )),
        )),
        (true, false) => Ok((ExtraSource::Output, None)),
        (false, true) => Ok((ExtraSource::Input, None)),
        (false, false) => Err(refuse(
            store,
            framework,
            format!(
                "`{name}` has shape {shape:?}: RetinaNet's P6 reads P{} ({} channels) or C{} \
                 ({c_top} channels); the file is damaged or its FPN is not RetinaNet's",
                top + 1,
                config.pyramid_channels,
                top + 1
            ),
        )),
    }
}
