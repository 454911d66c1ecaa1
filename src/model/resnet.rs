//! The bottom-up path: the ResNet family (basic blocks for ResNet-18/34; bottlenecks, grouped in
//! ResNeXt and widened in Wide ResNet, for the rest) producing C1 (the stem's output) to C5, with
//! the variants the frameworks train: the stride on the 1x1 conv (caffe style), ResNet-D's deep
//! stem and average-pool shortcuts. Names come from [`naming`].

use crate::graph::ops::{Add, AvgPool2d, AvgPool2dOptions, MaxPool2d, MaxPool2dOptions};
use crate::graph::{Graph, Value};
use crate::model::config::{Block, FpnConfig, ResNetStyle, Stem, STEM_CHANNELS};
use crate::model::layers::{relu, BatchNorm2d, Conv2d};
use crate::model::naming::{self, ConvNorm};
use crate::weights::VarBuilder;

/// A conv and its batch norm.
struct ConvBn {
    conv: Conv2d,
    bn: BatchNorm2d,
}

impl ConvBn {
    fn new(vb: &VarBuilder, names: &ConvNorm, conv: ConvShape, eps: f32) -> Self {
        let ConvShape {
            cin,
            cout,
            kernel,
            stride,
            groups,
        } = conv;
        ConvBn {
            conv: Conv2d::grouped(
                &vb.pp(&names.conv),
                cin,
                cout,
                kernel,
                stride,
                kernel / 2,
                groups,
            ),
            bn: BatchNorm2d::new(&vb.pp(&names.norm), cout, eps),
        }
    }

    fn forward(&self, g: &mut Graph, x: Value) -> Value {
        let y = self.conv.forward(g, x);
        self.bn.forward(g, y)
    }
}

/// A bias-free conv's channels, kernel (padded to keep the size), stride and groups.
#[derive(Clone, Copy)]
struct ConvShape {
    cin: usize,
    cout: usize,
    kernel: usize,
    stride: usize,
    groups: usize,
}

impl ConvShape {
    fn new(cin: usize, cout: usize, kernel: usize, stride: usize) -> Self {
        ConvShape {
            cin,
            cout,
            kernel,
            stride,
            groups: 1,
        }
    }
}

/// A projection shortcut: an optional average pool (ResNet-D), then a 1x1 conv and batch norm.
struct Shortcut {
    pool: Option<AvgPool2dOptions>,
    proj: ConvBn,
}

/// One residual block: its convs and batch norms in order (a ReLU after each but the last), and
/// a projection shortcut where the shape changes; ReLU after the sum.
pub struct ResidualBlock {
    main: Vec<ConvBn>,
    shortcut: Option<Shortcut>,
    name: String,
}

/// Where a block sits and what it reads: its stage (1..=4), its input channels and stride.
#[derive(Clone, Copy)]
struct BlockPlace {
    stage: usize,
    in_planes: usize,
    stride: usize,
}

impl ResidualBlock {
    /// Reads a block of `config.block` type at `place`: two 3x3 convs (basic) or 1x1, 3x3
    /// (grouped), 1x1 (bottleneck; the stride on the 3x3, or on the first 1x1 in the caffe
    /// style), each with its norm, and the shortcut, named as the layout names them.
    fn new(vb: &VarBuilder, config: &FpnConfig, place: BlockPlace) -> Self {
        let BlockPlace {
            stage,
            in_planes,
            stride,
        } = place;
        let eps = config.bn_eps;
        let out = config.stage_channels(stage);
        let width = config.block_width(stage - 1);
        let names = |i| naming::block_conv(config.layout, i);
        let main = match config.block {
            Block::Basic => vec![
                ConvBn::new(
                    vb,
                    &names(1),
                    ConvShape::new(in_planes, out, 3, stride),
                    eps,
                ),
                ConvBn::new(vb, &names(2), ConvShape::new(out, out, 3, 1), eps),
            ],
            Block::Bottleneck => {
                let (s1, s3) = match config.style {
                    ResNetStyle::Pytorch => (1, stride),
                    ResNetStyle::Caffe => (stride, 1),
                };
                let grouped = ConvShape {
                    groups: config.groups,
                    ..ConvShape::new(width, width, 3, s3)
                };
                vec![
                    ConvBn::new(vb, &names(1), ConvShape::new(in_planes, width, 1, s1), eps),
                    ConvBn::new(vb, &names(2), grouped, eps),
                    ConvBn::new(vb, &names(3), ConvShape::new(width, out, 1, 1), eps),
                ]
            }
        };
        let shortcut = (stride != 1 || in_planes != out).then(|| {
            let names = naming::shortcut(config.layout, config.avg_down);
            // ResNet-D averages first, so that the 1x1 conv sees every pixel.
            let (pool, conv_stride) = if config.avg_down {
                (
                    (stride > 1).then(|| AvgPool2dOptions::new(stride, stride)),
                    1,
                )
            } else {
                (None, stride)
            };
            Shortcut {
                pool,
                proj: ConvBn::new(
                    vb,
                    &names,
                    ConvShape::new(in_planes, out, 1, conv_stride),
                    eps,
                ),
            }
        });
        ResidualBlock {
            main,
            shortcut,
            name: vb.prefix().to_string(),
        }
    }

    /// Records the block applied to `x`.
    pub fn forward(&self, g: &mut Graph, x: Value) -> Value {
        // The shortcut first, so that the residual is ready when the main path's last conv runs
        // and the add can fuse into that conv's epilogue.
        let identity = match &self.shortcut {
            Some(Shortcut { pool, proj }) => {
                let s = match pool {
                    Some(opts) => g.push(format!("{}.pool", self.name), AvgPool2d(*opts), &[x]),
                    None => x,
                };
                proj.forward(g, s)
            }
            None => x,
        };
        let mut y = x;
        for (i, layer) in self.main.iter().enumerate() {
            y = layer.forward(g, y);
            if i + 1 < self.main.len() {
                y = relu(g, y);
            }
        }
        let sum = g.push(format!("{}.add", self.name), Add, &[y, identity]);
        relu(g, sum)
    }
}

/// The backbone: the stem (one 7x7/2 conv or ResNet-D's three 3x3 convs, each with batch norm
/// and ReLU), a 3x3/2 max pool, and `config.depth()` of the four layers, with base widths 64,
/// 128, 256, 512 and strides 1, 2, 2, 2.
pub struct ResNet {
    stem: Vec<ConvBn>,
    layers: Vec<Vec<ResidualBlock>>,
}

impl ResNet {
    /// Reads the stem (with `config.in_channels` inputs) and the layers `config` builds, named
    /// as `config.layout` names them, under `vb`.
    pub fn new(vb: &VarBuilder, config: &FpnConfig) -> Self {
        let eps = config.bn_eps;
        let names = naming::stem(config.layout, config.stem);
        let shapes = match config.stem {
            Stem::Plain => vec![ConvShape::new(config.in_channels, STEM_CHANNELS, 7, 2)],
            Stem::Deep([a, b, c]) => vec![
                ConvShape::new(config.in_channels, a, 3, 2),
                ConvShape::new(a, b, 3, 1),
                ConvShape::new(b, c, 3, 1),
            ],
        };
        let stem = names
            .iter()
            .zip(shapes)
            .map(|(names, shape)| ConvBn::new(vb, names, shape, eps))
            .collect();
        let mut in_planes = config.stem.channels();
        let mut layers = Vec::with_capacity(4);
        for stage in 1..=config.depth() {
            let vb_layer = vb.pp(naming::layer(config.layout, stage));
            let layer = (0..config.blocks[stage - 1])
                .map(|b| {
                    let stride = if b == 0 && stage > 1 { 2 } else { 1 };
                    let place = BlockPlace {
                        stage,
                        in_planes,
                        stride,
                    };
                    in_planes = config.stage_channels(stage);
                    ResidualBlock::new(&vb_layer.pp(b), config, place)
                })
                .collect();
            layers.push(layer);
        }
        ResNet { stem, layers }
    }

    /// Records the backbone on `x` and returns C1 (the stem's output, before the max pool) and
    /// C2 and up, one per layer built: stage `s` at index `s`.
    pub fn forward(&self, g: &mut Graph, x: Value) -> Vec<Value> {
        g.set_stage("stem");
        let mut y = x;
        for layer in &self.stem {
            y = layer.forward(g, y);
            y = relu(g, y);
        }
        let mut c = Vec::with_capacity(self.layers.len() + 1);
        c.push(y);
        let mut y = g.push("maxpool", MaxPool2d(MaxPool2dOptions::new(3, 2, 1)), &[y]);
        for (l, layer) in self.layers.iter().enumerate() {
            g.set_stage(format!("layer{}", l + 1));
            for block in layer {
                y = block.forward(g, y);
            }
            c.push(y);
        }
        c
    }
}
