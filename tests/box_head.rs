//! torchvision's Faster R-CNN box head, `TwoMLPHead` and `FastRCNNPredictor`, against the
//! graph of the crate's linear layers and softmax loaded from the same `state_dict` under
//! torchvision's names (tests/fixtures/make_box_head_fixtures.py): fc6 (ReLU), fc7 (ReLU), then
//! cls_score and bbox_pred side by side, and the softmax of the class logits, from RoIAlign
//! shaped features `[R, 256, 7, 7]`; and the errors of a state_dict of other shapes.

mod common;

use common::{assert_close, gpu};
use fpn_wgpu::graph::executor::{Algorithms, Executor};
use fpn_wgpu::graph::ops::Softmax;
use fpn_wgpu::graph::Graph;
use fpn_wgpu::model::layers::Linear;
use fpn_wgpu::reference;
use fpn_wgpu::tensor_file::{read_tensors, HostTensor, TensorMap};
use fpn_wgpu::weights::VarStore;
use fpn_wgpu::{Error, Precision, Tensor};

fn fixture() -> TensorMap {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/box_head_tv.safetensors");
    read_tensors(&path, |_| false).unwrap()
}

/// The fixture's weights alone, as a model's state_dict would hold them.
fn state_dict(t: &TensorMap) -> TensorMap {
    t.iter()
        .filter(|(name, _)| name.starts_with("roi_heads."))
        .map(|(name, v)| (name.clone(), v.clone()))
        .collect()
}

/// The box head's four layers read from `store` under torchvision's names: fc6 takes
/// `in_features` (256*7*7 for torchvision's pooler), the widths are read from the file.
struct BoxHead {
    fc6: Linear,
    fc7: Linear,
    cls_score: Linear,
    bbox_pred: Linear,
}

impl BoxHead {
    fn new(store: &VarStore, in_features: usize) -> Self {
        let width = |name: &str| store.shape_of(name).map_or(0, |s| s[0]);
        let representation = width("roi_heads.box_head.fc6.weight");
        let classes = width("roi_heads.box_predictor.cls_score.weight");
        let heads = store.root().pp("roi_heads");
        let head = heads.pp("box_head");
        let predictor = heads.pp("box_predictor");
        BoxHead {
            fc6: Linear::new(&head.pp("fc6"), in_features, representation, true).with_relu(),
            fc7: Linear::new(&head.pp("fc7"), representation, representation, true).with_relu(),
            cls_score: Linear::new(&predictor.pp("cls_score"), representation, classes, true),
            bbox_pred: Linear::new(
                &predictor.pp("bbox_pred"),
                representation,
                4 * classes,
                true,
            ),
        }
    }

    fn graph(&self) -> Graph {
        let mut g = Graph::new();
        let x = g.input();
        let x = self.fc6.forward(&mut g, x);
        let x = self.fc7.forward(&mut g, x);
        let logits = self.cls_score.forward(&mut g, x);
        let boxes = self.bbox_pred.forward(&mut g, x);
        let scores = g.push("roi_heads.softmax", Softmax, &[logits]);
        g.output("class_logits", logits);
        g.output("box_regression", boxes);
        g.output("scores", scores);
        g
    }
}

#[test]
fn box_head_matches_torchvision() {
    let t = fixture();
    let features = &t["features"];
    let shape: [usize; 4] = features.shape.clone().try_into().unwrap();
    assert_eq!(shape[1..], [256, 7, 7]);
    let store = VarStore::from_tensors("box_head_tv.safetensors", state_dict(&t));
    let head = BoxHead::new(&store, 256 * 7 * 7);
    store.finish().unwrap();

    // The CPU twin agrees with torchvision too: the flattening order and the layers' layout
    // are torchvision's, not just the GPU's and the reference's.
    let layer = |name: &str, x: &[f32], rows: usize, relu: bool| {
        let w = &t[&format!("{name}.weight")];
        let b = &t[&format!("{name}.bias")];
        reference::linear(x, rows, &w.data, w.shape[0], Some(&b.data), relu)
    };
    let rows = shape[0];
    let x = layer("roi_heads.box_head.fc6", &features.data, rows, true);
    let x = layer("roi_heads.box_head.fc7", &x, rows, true);
    let logits = layer("roi_heads.box_predictor.cls_score", &x, rows, false);
    let boxes = layer("roi_heads.box_predictor.bbox_pred", &x, rows, false);
    let classes = t["class_logits"].shape[1];
    let scores = reference::softmax_channels(&logits, [rows, classes, 1, 1]);
    for (name, twin) in [
        ("class_logits", &logits),
        ("box_regression", &boxes),
        ("scores", &scores),
    ] {
        assert_close(&format!("reference {name}"), twin, &t[name].data, 1e-5);
    }

    let ctx = gpu();
    for precision in Precision::ALL {
        if precision == Precision::F16 && common::f16_gpu().is_none() {
            continue;
        }
        let ex = Executor::with_options(ctx, head.graph(), Algorithms::Direct, precision).unwrap();
        let x = Tensor::from_slice(ctx, shape, &features.data).unwrap();
        let outputs = ex.forward(&x).unwrap();
        let mut report = Vec::new();
        for name in ["class_logits", "box_regression", "scores"] {
            let want = &t[name];
            let got = &outputs.iter().find(|(n, _)| n == name).unwrap().1;
            // torchvision's [R, X] as [R, X, 1, 1].
            assert_eq!(got.shape(), [want.shape[0], want.shape[1], 1, 1], "{name}");
            // f32: about 1e-6 (float sums in another order than PyTorch's). f16: the weights
            // and features are f16 values already, so only fc6's and fc7's outputs and the
            // logits are rounded (measured 3e-4 to 5e-4 on lavapipe).
            let tol = match precision {
                Precision::F32 => 1e-5,
                Precision::F16 => 2e-3,
            };
            let err = assert_close(
                &format!("{name} ({precision})"),
                &got.download(ctx).unwrap(),
                &want.data,
                tol,
            );
            report.push(format!("{name} {err:.2e}"));
        }
        eprintln!(
            "torchvision box head, {} boxes, {precision}: max relative error {}",
            shape[0],
            report.join(", ")
        );
    }
}

/// A state_dict whose fc6 was made for 14x14 pooling, one without a bias and one with an extra
/// tensor: the error names each tensor and its shapes.
#[test]
fn box_head_weights_of_other_shapes_are_errors_naming_the_tensor() {
    let t = fixture();
    let store = VarStore::from_tensors("box_head_tv.safetensors", state_dict(&t));
    BoxHead::new(&store, 256 * 14 * 14);
    let Err(e @ Error::Weights { .. }) = store.finish() else {
        panic!("a 14x14 fc6 on 7x7 weights must be refused");
    };
    let msg = e.to_string();
    assert!(
        msg.contains("roi_heads.box_head.fc6.weight") && msg.contains("50176"),
        "{msg}"
    );

    let mut weights = state_dict(&t);
    weights.remove("roi_heads.box_predictor.bbox_pred.bias");
    weights.insert(
        "roi_heads.box_predictor.extra.weight".into(),
        HostTensor {
            shape: vec![2],
            data: vec![0.0; 2],
        },
    );
    let store = VarStore::from_tensors("edited", weights);
    BoxHead::new(&store, 256 * 7 * 7);
    let msg = store.finish().unwrap_err().to_string();
    assert!(
        msg.contains("missing tensor `roi_heads.box_predictor.bbox_pred.bias`"),
        "{msg}"
    );
    assert!(
        msg.contains("unexpected tensor `roi_heads.box_predictor.extra.weight`"),
        "{msg}"
    );
}
