//! How a network wants its pictures' pixels: the channel order and the per-channel mean and
//! standard deviation its training used, as the checkpoints of detectron2 and mmdetection
//! record or imply them. torchvision's ImageNet normalisation is the default everywhere else.

/// A per-channel normalisation of 0..255 pixel values, `(v - mean) / std`, in the channel order
/// a network was trained on.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PixelNorm {
    /// Whether the network takes blue, green, red (OpenCV's order) rather than RGB.
    pub bgr: bool,
    /// Per-channel means, in the network's channel order, on 0..255 values.
    pub mean: [f32; 3],
    /// Per-channel standard deviations, in the network's channel order.
    pub std: [f32; 3],
}

impl PixelNorm {
    /// BGR minus the caffe ImageNet means, unscaled: detectron2's defaults (its MSRA weights)
    /// and mmdetection's caffe-style configs.
    pub const CAFFE: PixelNorm = PixelNorm {
        bgr: true,
        mean: [103.530, 116.280, 123.675],
        std: [1.0, 1.0, 1.0],
    };

    /// torchvision's ImageNet normalisation on 0..255 values, RGB: what every other network
    /// here takes.
    pub const IMAGENET_RGB: PixelNorm = PixelNorm {
        bgr: false,
        mean: [123.675, 116.280, 103.530],
        std: [58.395, 57.120, 57.375],
    };

    /// torchvision's ImageNet normalisation on 0..255 values, in BGR order: what detectron2's
    /// configs for torchvision-trained backbones (its ResNeXt ones) set.
    pub const TORCHVISION_BGR: PixelNorm = PixelNorm {
        bgr: true,
        mean: [103.530, 116.280, 123.675],
        std: [57.375, 57.120, 58.395],
    };

    /// Checks that every deviation is a positive finite number and every mean finite.
    pub fn validate(&self) -> Result<(), String> {
        if self.std.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
            return Err(format!(
                "the pixel standard deviations {:?} must be positive and finite",
                self.std
            ));
        }
        if self.mean.iter().any(|m| !m.is_finite()) {
            return Err(format!("the pixel means {:?} must be finite", self.mean));
        }
        Ok(())
    }

    /// The normalisation in words, for progress output.
    pub fn describe(&self) -> String {
        format!(
            "{} values in 0..255, minus {:?}, over {:?}",
            if self.bgr { "BGR" } else { "RGB" },
            self.mean,
            self.std
        )
    }
}
