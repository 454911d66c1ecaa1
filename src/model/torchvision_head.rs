//! torchvision's `FeaturePyramidNetwork` with its extra blocks: 1x1 `inner_blocks` on the
//! returned backbone levels, a nearest-neighbour top-down path, a 3x3 `layer_blocks` conv on every
//! level (P5 included), then `LastLevelMaxPool` or RetinaNet's `LastLevelP6P7`.

use crate::graph::ops::{MaxPool2d, MaxPool2dOptions, UpsampleAdd, UpsampleMode};
use crate::graph::{Graph, Value};
use crate::model::config::{ExtraLevels, FpnConfig, P6Source};
use crate::model::layers::{relu, Conv2d};
use crate::model::PYRAMID_CHANNELS;
use crate::weights::VarBuilder;

enum Extra {
    None,
    MaxPool,
    P6P7 {
        p6: Conv2d,
        p7: Conv2d,
        from: P6Source,
    },
}

/// The head under `fpn.`: one (lateral, output) conv pair per returned backbone level.
pub struct TorchvisionHead {
    /// Backbone level (0..4 for C2..C5), lateral 1x1 conv, output 3x3 conv; finest first.
    levels: Vec<(usize, Conv2d, Conv2d)>,
    extra: Extra,
    upsample: UpsampleMode,
}

impl TorchvisionHead {
    /// Reads `inner_blocks.{i}.0` and `layer_blocks.{i}.0` for the i-th returned level and, for
    /// RetinaNet, `extra_blocks.p6` / `p7`.
    pub fn new(vb: &VarBuilder, config: &FpnConfig) -> Self {
        let p = PYRAMID_CHANNELS;
        let levels = config
            .returned_levels()
            .into_iter()
            .enumerate()
            .map(|(i, l)| {
                let cin = config.level_channels(l);
                (
                    l,
                    Conv2d::new(&vb.pp("inner_blocks").pp(i).pp(0), cin, p, 1, 1, 0, true),
                    Conv2d::new(&vb.pp("layer_blocks").pp(i).pp(0), p, p, 3, 1, 1, true),
                )
            })
            .collect();
        let extra = match config.extra {
            ExtraLevels::None => Extra::None,
            ExtraLevels::MaxPool => Extra::MaxPool,
            ExtraLevels::P6P7(from) => {
                // torchvision's "C5" is the coarsest returned level, whichever that is.
                let top = config.returned_levels().last().copied().unwrap_or(3);
                let cin = match from {
                    P6Source::P5 => p,
                    P6Source::C5 => config.level_channels(top),
                };
                let vb = vb.pp("extra_blocks");
                Extra::P6P7 {
                    p6: Conv2d::new(&vb.pp("p6"), cin, p, 3, 2, 1, true),
                    p7: Conv2d::new(&vb.pp("p7"), p, p, 3, 2, 1, true),
                    from,
                }
            }
        };
        TorchvisionHead {
            levels,
            extra,
            upsample: config.upsample,
        }
    }

    /// Records the head on the backbone's levels (C2 and up) and returns the levels finest first, named by their
    /// stride (`p3` has stride 8): the returned levels, then the extra ones.
    pub fn forward(&self, g: &mut Graph, c: &[Value]) -> Vec<(String, Value)> {
        g.set_stage("top-down");
        let mut merged = vec![0; self.levels.len()];
        let mut coarse: Option<Value> = None;
        for (i, (l, lateral, _)) in self.levels.iter().enumerate().rev() {
            let lat = lateral.forward(g, c[*l]);
            let v = match coarse {
                None => lat,
                Some(top) => g.push(
                    format!("topdown{}", l + 2),
                    UpsampleAdd(self.upsample),
                    &[top, lat],
                ),
            };
            merged[i] = v;
            coarse = Some(v);
        }
        g.set_stage("smooth");
        let mut out: Vec<(String, Value)> = self
            .levels
            .iter()
            .zip(&merged)
            .map(|((l, _, smooth), &m)| (format!("p{}", l + 2), smooth.forward(g, m)))
            .collect();
        let (top_level, _, _) = self.levels[self.levels.len() - 1];
        let top = out[out.len() - 1].1;
        g.set_stage("extra");
        match &self.extra {
            Extra::None => {}
            Extra::MaxPool => {
                let v = g.push("pool", MaxPool2d(MaxPool2dOptions::new(1, 2, 0)), &[top]);
                out.push((format!("p{}", top_level + 3), v));
            }
            Extra::P6P7 { p6, p7, from } => {
                let x = match from {
                    P6Source::P5 => top,
                    P6Source::C5 => c[top_level],
                };
                let v6 = p6.forward(g, x);
                let r = relu(g, v6);
                let v7 = p7.forward(g, r);
                out.push((format!("p{}", top_level + 3), v6));
                out.push((format!("p{}", top_level + 4), v7));
            }
        }
        out
    }
}
