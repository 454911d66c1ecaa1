//! The seed network's head (kuangliu's `fpn.py`): 1x1 lateral convs, a bilinear top-down path
//! and 3x3 smoothing of P2..P4; P5 is the top lateral conv itself.

use crate::graph::ops::{UpsampleAdd, UpsampleMode};
use crate::graph::{Graph, Value};
use crate::model::config::FpnConfig;
use crate::model::layers::Conv2d;
use crate::model::PYRAMID_CHANNELS;
use crate::weights::VarBuilder;

/// The top-down path and the smoothing convs (`toplayer`, `latlayer1..3`, `smooth1..3`).
pub struct SeedHead {
    toplayer: Conv2d,
    lateral: [Conv2d; 3],
    smooth: [Conv2d; 3],
    upsample: UpsampleMode,
}

impl SeedHead {
    /// Reads `toplayer`, `latlayer1..3` (on C4, C3, C2) and `smooth1..3` (for P4, P3, P2).
    pub fn new(vb: &VarBuilder, config: &FpnConfig) -> Self {
        let p = PYRAMID_CHANNELS;
        let level_channels = |l| config.level_channels(l);
        SeedHead {
            toplayer: Conv2d::new(&vb.pp("toplayer"), level_channels(3), p, 1, 1, 0, true),
            lateral: [
                Conv2d::new(&vb.pp("latlayer1"), level_channels(2), p, 1, 1, 0, true),
                Conv2d::new(&vb.pp("latlayer2"), level_channels(1), p, 1, 1, 0, true),
                Conv2d::new(&vb.pp("latlayer3"), level_channels(0), p, 1, 1, 0, true),
            ],
            smooth: [
                Conv2d::new(&vb.pp("smooth1"), p, p, 3, 1, 1, true),
                Conv2d::new(&vb.pp("smooth2"), p, p, 3, 1, 1, true),
                Conv2d::new(&vb.pp("smooth3"), p, p, 3, 1, 1, true),
            ],
            upsample: config.upsample,
        }
    }

    /// Records the head on [C2, C3, C4, C5] and returns `p2`..`p5`, finest first.
    pub fn forward(&self, g: &mut Graph, c: &[Value]) -> Vec<(String, Value)> {
        g.set_stage("top-down");
        let p5 = self.toplayer.forward(g, c[3]);
        let mut merged = [0; 3]; // top-down sums at the C4, C3, C2 resolutions
        let mut coarse = p5;
        for (i, lat) in self.lateral.iter().enumerate() {
            let l = lat.forward(g, c[2 - i]);
            coarse = g.push(
                format!("topdown{}", 4 - i),
                UpsampleAdd(self.upsample),
                &[coarse, l],
            );
            merged[i] = coarse;
        }
        g.set_stage("smooth");
        let p4 = self.smooth[0].forward(g, merged[0]);
        let p3 = self.smooth[1].forward(g, merged[1]);
        let p2 = self.smooth[2].forward(g, merged[2]);
        [p2, p3, p4, p5]
            .into_iter()
            .enumerate()
            .map(|(i, v)| (format!("p{}", i + 2), v))
            .collect()
    }
}
