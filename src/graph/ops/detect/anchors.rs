//! Anchor boxes as torchvision's `AnchorGenerator` makes them.

/// Anchor sizes and aspect ratios per level (torchvision's `AnchorGenerator(sizes,
/// aspect_ratios)`): each level's cell has one anchor per (ratio, size) pair, ratios outer.
#[derive(Clone, Debug, PartialEq)]
pub struct AnchorSpec {
    /// Per level, the anchors' sizes in pixels.
    pub sizes: Vec<Vec<f32>>,
    /// Per level, the height-over-width ratios.
    pub aspect_ratios: Vec<Vec<f32>>,
}

impl AnchorSpec {
    /// RetinaNet's anchors on P3..P7: sizes `x, int(x * 2^(1/3)), int(x * 2^(2/3))` for
    /// x in 32..512, ratios 0.5, 1, 2: nine per location.
    pub fn retinanet() -> Self {
        let sizes = [32u32, 64, 128, 256, 512]
            .iter()
            .map(|&x| {
                let x = x as f64;
                vec![
                    x as f32,
                    (x * 2f64.powf(1.0 / 3.0)).trunc() as f32,
                    (x * 2f64.powf(2.0 / 3.0)).trunc() as f32,
                ]
            })
            .collect();
        AnchorSpec {
            sizes,
            aspect_ratios: vec![vec![0.5, 1.0, 2.0]; 5],
        }
    }

    /// The RPN's anchors of torchvision's Faster and Mask R-CNN on P2..P6 (its
    /// `_default_anchorgen`): one size per level, 32 to 512, ratios 0.5, 1, 2: three per
    /// location.
    pub fn rpn() -> Self {
        AnchorSpec {
            sizes: [32.0, 64.0, 128.0, 256.0, 512.0]
                .iter()
                .map(|&s| vec![s])
                .collect(),
            aspect_ratios: vec![vec![0.5, 1.0, 2.0]; 5],
        }
    }

    /// FCOS's anchors on P3..P7: one square of side 8..128 per location.
    pub fn fcos() -> Self {
        AnchorSpec {
            sizes: [8.0, 16.0, 32.0, 64.0, 128.0]
                .iter()
                .map(|&s| vec![s])
                .collect(),
            aspect_ratios: vec![vec![1.0]; 5],
        }
    }

    /// Anchors per location (the same on every level, as the heads require).
    pub fn per_location(&self) -> usize {
        self.sizes
            .first()
            .zip(self.aspect_ratios.first())
            .map_or(0, |(s, r)| s.len() * r.len())
    }

    /// Every level's cell anchors (x1, y1, x2, y2) centred on the origin, level after level:
    /// torchvision's `generate_anchors` in f32, rounded half to even like `torch.round`.
    pub fn cell_anchors(&self) -> Vec<[f32; 4]> {
        let mut out = Vec::new();
        for (sizes, ratios) in self.sizes.iter().zip(&self.aspect_ratios) {
            for &ratio in ratios {
                let h_ratio = ratio.sqrt();
                let w_ratio = 1.0 / h_ratio;
                for &size in sizes {
                    let ws = w_ratio * size;
                    let hs = h_ratio * size;
                    out.push([-ws, -hs, ws, hs].map(|v| (v / 2.0).round_ties_even()));
                }
            }
        }
        out
    }
}
