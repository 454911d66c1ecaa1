//! torchvision's region proposal network (Faster R-CNN v1 and v2 heads) against its eval
//! output, from the FPN levels on (fixtures made by `tests/fixtures/make_rpn_fixtures.py`),
//! the RPN on an FPN's levels run by the executor (fused, planned) against the same graph run op
//! by op, and the RPN's additions to the box decoding against their CPU twin.
//!
//! The rule: every torchvision proposal is matched by one of ours from the same level with an
//! IoU of at least 0.99 and each coordinate within 1e-3 of the resized picture's longer side
//! (f32), the score within 1e-5. Unmatched proposals, on either side, are allowed only where
//! the selection was decided by a hair: scores within 1e-5 of the post-NMS cut (the last kept
//! score, when the cut acted) or of a differently ranked neighbour, where f32 rounding of the
//! head's sums may reorder two candidates; at most max(4, 1%) of a picture's proposals. The
//! fixtures have no two equal scores; their logits lie within +-16, so the sigmoid ranks them as
//! torchvision's logits do.

mod common;

use std::path::Path;

use common::{assert_close, gpu};
use fpn_wgpu::graph::executor::{Executor, ExecutorOptions};
use fpn_wgpu::graph::ops::detect::{
    AnchorSpec, BoxCoding, DetectionGeometry, DetectionTransform, LabelSource, Normalize,
    ResizeRule,
};
use fpn_wgpu::graph::ops::{Input, Launch, Target};
use fpn_wgpu::graph::passes::Fusion;
use fpn_wgpu::graph::{Graph, Value};
use fpn_wgpu::kernels::box_decode::{self, DecodeSpec};
use fpn_wgpu::model::rpn::RPN_MIN_SIZE;
use fpn_wgpu::model::{Fpn, FpnConfig, RegionProposalNetwork, RpnConfig, RpnOptions};
use fpn_wgpu::reference::{self, AnchorLevel};
use fpn_wgpu::rng::SplitMix64;
use fpn_wgpu::tensor::MemoryFormat;
use fpn_wgpu::tensor_file::{read_tensors, HostTensor, TensorMap};
use fpn_wgpu::weights::VarStore;
use fpn_wgpu::{GpuContext, Precision, Tensor, Tuning};

fn fixture(name: &str) -> TensorMap {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(format!("{name}.safetensors"));
    read_tensors(&path, |_| false).unwrap()
}

/// The head's tensors under torchvision's names: the stored ones as they are, the 3x3 convs
/// drawn again from their `generated.*` entry [seed, scale, d0, d1, d2, d3].
fn head_tensors(fx: &TensorMap) -> TensorMap {
    let mut out = TensorMap::new();
    for (name, t) in fx {
        if name.starts_with("rpn.") {
            out.insert(name.clone(), t.clone());
        } else if let Some(real) = name.strip_prefix("generated.") {
            let d = &t.data;
            let shape: Vec<usize> = d[2..].iter().map(|&v| v as usize).collect();
            let n = shape.iter().product();
            let scale = d[1];
            let data = SplitMix64::new(d[0] as u64).vec(n, -scale, scale);
            out.insert(real.to_string(), HostTensor { shape, data });
        }
    }
    out
}

fn shape4(t: &HostTensor) -> [usize; 4] {
    [t.shape[0], t.shape[1], t.shape[2], t.shape[3]]
}

/// Runs `graph` op by op in one submit, with a tensor given for each of its inputs (node 0 and
/// every other `Input` node): the executor takes one input, and the RPN's test feeds it the
/// FPN's five levels besides the pictures. Returns the graph's outputs.
fn run_graph(ctx: &GpuContext, graph: &Graph, inputs: Vec<(Value, Tensor)>) -> Vec<Tensor> {
    let target = Target {
        precision: Precision::F32,
        layout: MemoryFormat::Nchw,
        cooperative: false,
        winograd: false,
    };
    let mut values: Vec<Option<Tensor>> = (0..graph.nodes().len()).map(|_| None).collect();
    for (v, t) in inputs {
        values[v] = Some(t);
    }
    let mut dispatches = Vec::new();
    for (i, node) in graph.nodes().iter().enumerate() {
        if i == 0 || node.op::<Input>().is_some() {
            assert!(values[i].is_some(), "no tensor for input `{}`", node.name);
            continue;
        }
        let ins: Vec<&Tensor> = node
            .inputs
            .iter()
            .map(|&v| values[v].as_ref().unwrap())
            .collect();
        let shapes: Vec<[usize; 4]> = ins.iter().map(|t| t.shape()).collect();
        let shape = node.op.output_shape(&shapes).unwrap();
        let out = Tensor::empty_as(ctx, shape, node.op.output_precision(Precision::F32)).unwrap();
        let op = node.op.lower(ctx, &target).unwrap();
        dispatches.extend(op.prepare(ctx, &ins, &out, Launch::default()).unwrap());
        values[i] = Some(out);
    }
    ctx.run(&dispatches.iter().collect::<Vec<_>>()).unwrap();
    graph
        .outputs()
        .iter()
        .map(|&(_, v)| values[v].take().unwrap())
        .collect()
}

/// The geometry, options and pictures' shape a fixture was made with.
fn setup(fx: &TensorMap) -> (DetectionGeometry, RpnOptions, [usize; 4]) {
    let r = &fx["resize"].data;
    let geometry = RegionProposalNetwork::geometry(ResizeRule {
        min_size: r[0] as usize,
        max_size: r[1] as usize,
        size_divisible: 32,
    });
    let o = &fx["options"].data;
    let options = RpnOptions {
        rpn_pre_nms_top_n_test: o[0] as usize,
        rpn_post_nms_top_n_test: o[1] as usize,
        rpn_nms_thresh: o[2],
        rpn_score_thresh: o[3],
    };
    let p = &fx["picture_shape"].data;
    let pictures = [p[0] as usize, p[1] as usize, p[2] as usize, p[3] as usize];
    (geometry, options, pictures)
}

/// The RPN of `head` run on the fixture's levels: the proposals `[N, 1, R, 6]`, downloaded.
fn proposals(fx: &TensorMap, head: &TensorMap) -> (Vec<f32>, [usize; 4]) {
    let ctx = gpu();
    let (geometry, options, pictures) = setup(fx);
    let rpn = RegionProposalNetwork::from_tensors("the fixture's head", head, options).unwrap();
    let mut g = Graph::new();
    let picture_value = g.input();
    let level_values: Vec<Value> = (0..5)
        .map(|l| g.push(format!("p{}", l + 2), Input, &[]))
        .collect();
    let out = rpn
        .forward(&mut g, &level_values, picture_value, &geometry)
        .unwrap();
    g.output("proposals", out);
    let mut inputs = vec![(
        picture_value,
        Tensor::from_slice(ctx, pictures, &vec![0.0; pictures.iter().product()]).unwrap(),
    )];
    for (l, &v) in level_values.iter().enumerate() {
        let t = &fx[&format!("level.{l}")];
        inputs.push((v, Tensor::from_slice(ctx, shape4(t), &t.data).unwrap()));
    }
    let out = run_graph(ctx, &g, inputs).remove(0);
    (out.download(ctx).unwrap(), out.shape())
}

fn iou(a: [f32; 4], b: [f32; 4]) -> f32 {
    let area = |r: [f32; 4]| (r[2] - r[0]) * (r[3] - r[1]);
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = w * h;
    inter / (area(a) + area(b) - inter)
}

fn distance(a: [f32; 4], b: [f32; 4]) -> f32 {
    (0..4).map(|k| (a[k] - b[k]).abs()).fold(0.0, f32::max)
}

/// One side's proposals of one picture: (box, score, level).
type Proposals = Vec<([f32; 4], f32, u32)>;

/// Whether `score` was decided by a hair: within 1e-5 of `cut` or of a neighbour in `scores`
/// other than itself.
fn decided_by_a_hair(score: f32, cut: Option<f32>, scores: &[f32]) -> bool {
    let close = |s: f32| (s - score).abs() <= 1e-5;
    cut.is_some_and(close) || scores.iter().filter(|&&s| close(s)).count() > 1
}

/// Checks the rule for one picture; returns (matched, unmatched, worst box error, worst score
/// error).
fn compare(
    case: &str,
    got: &Proposals,
    want: &Proposals,
    longer: f32,
    post_nms: usize,
) -> (usize, usize, f32, f32) {
    let mut used = vec![false; got.len()];
    let (mut matched, mut unmatched, mut worst_box, mut worst_score) = (0, 0, 0.0f32, 0.0f32);
    let want_scores: Vec<f32> = want.iter().map(|p| p.1).collect();
    let got_scores: Vec<f32> = got.iter().map(|p| p.1).collect();
    // The post-NMS cut acted where a side kept as many as it may.
    let cut = |scores: &[f32]| (scores.len() == post_nms).then(|| scores[post_nms - 1]);
    for (j, &(b, s, l)) in want.iter().enumerate() {
        let best = (0..got.len())
            .filter(|&i| !used[i] && got[i].2 == l)
            .min_by(|&x, &y| distance(got[x].0, b).total_cmp(&distance(got[y].0, b)));
        let same = |i: usize| {
            let flat = |r: [f32; 4]| (r[2] - r[0]) * (r[3] - r[1]) == 0.0;
            let close = distance(got[i].0, b) <= 1e-3 * longer;
            close && (flat(b) || iou(got[i].0, b) >= 0.99)
        };
        let Some(i) = best.filter(|&i| same(i)) else {
            assert!(
                decided_by_a_hair(s, cut(&want_scores), &want_scores),
                "{case}: torchvision's proposal {j} (level {l}, score {s}, box {b:?}) has no match"
            );
            unmatched += 1;
            continue;
        };
        used[i] = true;
        matched += 1;
        worst_box = worst_box.max(distance(got[i].0, b));
        worst_score = worst_score.max((got[i].1 - s).abs());
    }
    for (i, &(b, s, l)) in got.iter().enumerate().filter(|&(i, _)| !used[i]) {
        assert!(
            decided_by_a_hair(s, cut(&got_scores), &got_scores),
            "{case}: our proposal {i} (level {l}, score {s}, box {b:?}) is not torchvision's"
        );
        unmatched += 1;
    }
    assert!(
        worst_score <= 1e-5,
        "{case}: a matched score is {worst_score} off"
    );
    // Each swap at the cut or between two near-equal scores costs a proposal on each side, and
    // may change what the swapped one suppresses: a handful, never a share.
    let bound = 4.max(want.len() / 100);
    assert!(
        unmatched <= bound,
        "{case}: {unmatched} proposals unmatched, more than {bound}"
    );
    (matched, unmatched, worst_box, worst_score)
}

fn check_against_torchvision(name: &str, conv_depth: usize) {
    let fx = fixture(name);
    let (geometry, options, pictures) = setup(&fx);
    let image = &fx["image_size"].data;
    let resized = geometry.resized((pictures[2], pictures[3])).unwrap();
    assert_eq!(
        resized,
        (image[0] as usize, image[1] as usize),
        "{name}: the resized size differs from torchvision's"
    );
    assert_eq!(
        AnchorSpec::rpn().cell_anchors().concat(),
        fx["cell_anchors"].data,
        "the RPN's cell anchors differ from torchvision's"
    );
    let head = head_tensors(&fx);
    let rpn = RegionProposalNetwork::from_tensors(name, &head, options).unwrap();
    assert_eq!(rpn.config().conv_depth, conv_depth);
    let (out, shape) = proposals(&fx, &head);
    let [n, _, r, six] = shape;
    assert_eq!(
        (n, r, six),
        (pictures[0], options.rpn_post_nms_top_n_test, 6)
    );
    let longer = resized.0.max(resized.1) as f32;
    let (mut total_matched, mut total_unmatched, mut worst_box) = (0, 0, 0.0f32);
    for img in 0..n {
        let records = &out[img * r * 6..(img + 1) * r * 6];
        let got: Proposals = records
            .chunks(6)
            .filter(|p| p[4] >= 0.0)
            .map(|p| ([p[0], p[1], p[2], p[3]], p[4], p[5].to_bits()))
            .collect();
        // Best first, the empty slots after the kept ones.
        assert!(got.windows(2).all(|w| w[0].1 >= w[1].1));
        assert!(records.chunks(6).skip(got.len()).all(|p| p[4] == -1.0));
        assert!(got
            .iter()
            .all(|p| p.0[0] >= 0.0 && p.0[2] <= resized.1 as f32 && p.0[3] <= resized.0 as f32));
        let boxes = &fx[&format!("boxes.{img}")].data;
        let scores = &fx[&format!("scores.{img}")].data;
        let levels = &fx[&format!("levels.{img}")].data;
        let want: Proposals = boxes
            .chunks(4)
            .zip(scores.iter().zip(levels))
            .map(|(b, (&s, &l))| ([b[0], b[1], b[2], b[3]], s, l as u32))
            .collect();
        let case = format!("{name} image {img}");
        let (matched, unmatched, box_err, score_err) =
            compare(&case, &got, &want, longer, options.rpn_post_nms_top_n_test);
        eprintln!(
            "{case}: {matched} of torchvision's {} proposals matched ({} ours), {unmatched} \
             unmatched; max box error {box_err} px ({:.1e} of the longer side), max score \
             error {score_err:e}",
            want.len(),
            got.len(),
            box_err / longer
        );
        total_matched += matched;
        total_unmatched += unmatched;
        worst_box = worst_box.max(box_err);
    }
    assert!(total_matched > 0);
    eprintln!(
        "{name}: {total_matched} matched, {total_unmatched} unmatched, max box error {worst_box} px"
    );
}

#[test]
fn rpn_v1_matches_torchvision() {
    check_against_torchvision("rpn_v1_batch2_69x91", 1);
}

#[test]
fn rpn_v2_matches_torchvision() {
    check_against_torchvision("rpn_v2_batch2_61x59", 2);
}

/// A v1 head saved before torchvision's `RPNHead` version 2 (`rpn.head.conv.weight`) loads as
/// torchvision loads it, and gives the same proposals.
#[test]
fn rpn_reads_old_head_names() {
    let fx = fixture("rpn_v1_batch2_69x91");
    let head = head_tensors(&fx);
    let mut old = head.clone();
    for t in ["weight", "bias"] {
        let v = old.remove(&format!("rpn.head.conv.0.0.{t}")).unwrap();
        old.insert(format!("rpn.head.conv.{t}"), v);
    }
    let options = setup(&fx).1;
    let rpn = RegionProposalNetwork::from_tensors("old names", &old, options).unwrap();
    assert_eq!(rpn.config().conv_depth, 1);
    let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
    let (a, _) = proposals(&fx, &head);
    let (b, _) = proposals(&fx, &old);
    assert!(bits(a) == bits(b), "the old names give other proposals");
}

#[test]
fn rpn_loader_names_missing_and_misfit_tensors() {
    let fx = fixture("rpn_v2_batch2_61x59");
    let head = head_tensors(&fx);
    let options = RpnOptions::default();
    let err = |tensors: &TensorMap| {
        RegionProposalNetwork::from_tensors("test.safetensors", tensors, options)
            .err()
            .expect("refused")
            .to_string()
    };
    let mut missing = head.clone();
    missing.remove("rpn.head.bbox_pred.bias");
    let e = err(&missing);
    assert!(
        e.contains("missing tensor `rpn.head.bbox_pred.bias`") && e.contains("test.safetensors"),
        "{e}"
    );
    let mut misfit = head.clone();
    misfit.insert(
        "rpn.head.cls_logits.weight".into(),
        HostTensor {
            shape: vec![9, 256, 1, 1],
            data: vec![0.0; 9 * 256],
        },
    );
    let e = err(&misfit);
    assert!(
        e.contains(
            "`rpn.head.cls_logits.weight` has shape [9, 256, 1, 1]; expected [3, 256, 1, 1]"
        ),
        "{e}"
    );
    let mut extra = head.clone();
    extra.insert(
        "rpn.head.conv.1.1.weight".into(),
        HostTensor {
            shape: vec![256],
            data: vec![1.0; 256],
        },
    );
    let e = err(&extra);
    assert!(
        e.contains("unexpected tensor `rpn.head.conv.1.1.weight`"),
        "{e}"
    );
    // A backbone alone is no RPN.
    let mut backbone = TensorMap::new();
    backbone.insert(
        "backbone.body.conv1.weight".into(),
        HostTensor {
            shape: vec![1],
            data: vec![0.0],
        },
    );
    let e = err(&backbone);
    assert!(e.contains("no `rpn.` tensors"), "{e}");
    // Other tensors of a whole detector are left alone.
    let mut whole = head.clone();
    whole.extend(backbone);
    RegionProposalNetwork::from_tensors("whole", &whole, options).unwrap();
}

#[test]
fn rpn_refuses_bad_options_and_levels() {
    let config = fpn_wgpu::model::RpnConfig::v1();
    for bad in [
        RpnOptions {
            rpn_pre_nms_top_n_test: 0,
            ..RpnOptions::default()
        },
        RpnOptions {
            rpn_post_nms_top_n_test: 0,
            ..RpnOptions::default()
        },
        RpnOptions {
            rpn_nms_thresh: f32::NAN,
            ..RpnOptions::default()
        },
        RpnOptions {
            rpn_score_thresh: f32::NAN,
            ..RpnOptions::default()
        },
        // Counts no NMS takes, up to ones whose shapes would overflow.
        RpnOptions {
            rpn_pre_nms_top_n_test: 20_000,
            ..RpnOptions::default()
        },
        RpnOptions {
            rpn_pre_nms_top_n_test: usize::MAX,
            ..RpnOptions::default()
        },
        RpnOptions {
            rpn_post_nms_top_n_test: usize::MAX,
            ..RpnOptions::default()
        },
    ] {
        let e = RegionProposalNetwork::random(1, config, bad)
            .err()
            .expect("refused")
            .to_string();
        assert!(e.contains("rpn_"), "{e}");
    }
    let rpn = RegionProposalNetwork::random(1, config, RpnOptions::default()).unwrap();
    let mut g = Graph::new();
    let pictures = g.input();
    let levels: Vec<Value> = (0..4).map(|_| g.push("level", Input, &[])).collect();
    let geometry = RegionProposalNetwork::geometry(ResizeRule::default());
    let e = rpn
        .forward(&mut g, &levels, pictures, &geometry)
        .unwrap_err()
        .to_string();
    assert!(e.contains("P2..P6"), "{e}");
}

/// The decoding's RPN options (small boxes removed, the level as the label) against the CPU
/// twin, on random selections over five levels; deltas wide enough that the cap, the clipping
/// and the removal all act, and some NaN centre offsets, whose boxes torchvision removes.
#[test]
fn proposal_decoding_matches_reference() {
    let ctx = gpu();
    let mut rng = SplitMix64::new(61);
    let geometry = RegionProposalNetwork::geometry(ResizeRule {
        min_size: 64,
        max_size: 100,
        size_divisible: 32,
    });
    let anchors = AnchorSpec::rpn();
    let a = anchors.per_location();
    let cells = anchors.cell_anchors();
    let (mut kept, mut removed) = (0, 0);
    for (picture, n, k) in [((69, 91), 2, 50), ((61, 59), 1, 17), ((150, 113), 3, 64)] {
        let (regions, (mh, mw)) = geometry.packed(picture).unwrap();
        let strides = geometry.strides(picture).unwrap();
        let (rh, rw) = geometry.resized(picture).unwrap();
        let levels = regions.len();
        let reg_shape = [n, a * 4, mh, mw];
        let mut regression: Vec<f32> = (0..reg_shape.iter().product::<usize>())
            .map(|i| {
                // dw, dh (channels 2, 3 of each anchor) from -12 to 6; dx, dy within +-1.
                if (i / (mh * mw)) % 4 >= 2 {
                    rng.uniform(-12.0, 6.0)
                } else {
                    rng.uniform(-1.0, 1.0)
                }
            })
            .collect();
        // NaN centre offsets (dx, dy of anchor 0): WGSL's `min` may or may not keep a NaN
        // log-size delta, as Rust's `f32::min` does not, so those are left out.
        for _ in 0..20 {
            let i = (rng.next_u64() % (n * mh * mw) as u64) as usize;
            let (image, at) = (i / (mh * mw), i % (mh * mw));
            regression[(image * a * 4 + (i % 2)) * mh * mw + at] = f32::NAN;
        }
        let mut selected = vec![-1.0f32; n * levels * k * 2];
        let mut per_segment = vec![Vec::new(); n * levels];
        for seg in 0..n * levels {
            let r = regions[seg % levels];
            let elements = (r.height * r.width) as usize * a;
            for s in 0..k {
                let o = (seg * k + s) * 2;
                if rng.next_f32() < 0.2 {
                    selected[o + 1] = f32::from_bits(u32::MAX);
                    continue;
                }
                let flat = (rng.next_u64() % elements as u64) as u32;
                let score = rng.uniform(0.0, 1.0);
                selected[o] = score;
                selected[o + 1] = f32::from_bits(flat);
                per_segment[seg].push((s, score, flat));
            }
        }
        let spec = DecodeSpec {
            regions: regions.clone(),
            strides: strides.clone(),
            cell_anchors: cells.clone(),
            anchors: a,
            classes: 1,
            clip: (rh as f32, rw as f32),
            coding: BoxCoding::retinanet(),
            min_size: Some(RPN_MIN_SIZE),
            labels: LabelSource::Level,
        };
        let sel = Tensor::from_slice(ctx, [n, levels, k, 2], &selected).unwrap();
        let reg = Tensor::from_slice(ctx, reg_shape, &regression).unwrap();
        let out = Tensor::empty(ctx, [n, 1, levels * k, 6]).unwrap();
        let d = box_decode::prepare(ctx, &sel, &reg, &spec, &out).unwrap();
        ctx.run(&[&d]).unwrap();
        let got = out.download(ctx).unwrap();
        let BoxCoding::Deltas {
            weights,
            xform_clip,
        } = spec.coding
        else {
            unreachable!()
        };
        for seg in 0..n * levels {
            let (image, l) = (seg / levels, seg % levels);
            let level = AnchorLevel {
                rect: (
                    regions[l].y0 as usize,
                    regions[l].x0 as usize,
                    regions[l].height as usize,
                    regions[l].width as usize,
                ),
                stride: (strides[l].0 as usize, strides[l].1 as usize),
                cell_anchors: cells[l * a..(l + 1) * a].to_vec(),
            };
            let pairs: Vec<_> = per_segment[seg].iter().map(|&(_, s, f)| (s, f)).collect();
            let want = reference::decode_proposals(
                &pairs,
                &regression,
                reg_shape,
                image,
                &level,
                l as u32,
                weights,
                xform_clip,
                (rh as f32, rw as f32),
                RPN_MIN_SIZE,
            );
            for (&(slot, _, _), w) in per_segment[seg].iter().zip(&want) {
                let r = &got[(seg * k + slot) * 6..(seg * k + slot + 1) * 6];
                let case = format!("{picture:?} level {l} slot {slot}");
                match w {
                    Some((b, s, label)) => {
                        assert_close(&case, &r[..4], b, 1e-5);
                        assert_eq!((r[4], r[5].to_bits()), (*s, *label), "{case}");
                        kept += 1;
                    }
                    None => {
                        assert_eq!((r[4], r[5].to_bits()), (-1.0, u32::MAX), "{case} removed");
                        removed += 1;
                    }
                }
            }
        }
    }
    assert!(kept > 300 && removed > 50, "{kept} kept, {removed} removed");
    eprintln!("proposal decoding: {kept} boxes kept and {removed} removed as the reference");
}

/// The RPN on an FPN's own levels (seeded random weights, torchvision's layout with the `pool`
/// level), from the pictures on: the executor's planned, fused run gives the proposals of the
/// unfused op-by-op run, so the RPN's graph is one the executor runs as it is.
#[test]
fn rpn_on_the_fpn_runs_in_the_executor() {
    let ctx = gpu();
    let store = VarStore::random(7);
    let geometry = RegionProposalNetwork::geometry(ResizeRule {
        min_size: 64,
        max_size: 100,
        size_divisible: 32,
    });
    let options = RpnOptions {
        rpn_pre_nms_top_n_test: 300,
        rpn_post_nms_top_n_test: 200,
        ..RpnOptions::default()
    };
    let rpn = RegionProposalNetwork::new(&store.root(), RpnConfig::v2(), options).unwrap();
    let mut g = Graph::new();
    let pictures = g.input();
    let x = g.push(
        "transform",
        DetectionTransform {
            geometry: geometry.clone(),
            normalize: Normalize::IMAGENET,
        },
        &[pictures],
    );
    let config = FpnConfig::torchvision([1, 1, 1, 1]);
    let levels = Fpn::levels(&store.root().pp("backbone"), config, &mut g, x).unwrap();
    let values: Vec<Value> = levels.iter().map(|(_, v)| *v).collect();
    let out = rpn.forward(&mut g, &values, pictures, &geometry).unwrap();
    g.output("proposals", out);
    let shape = [2, 3, 69, 91];
    let mut rng = SplitMix64::new(8);
    let data = rng.vec(shape.iter().product(), 0.0, 1.0);
    let input = Tensor::from_slice(ctx, shape, &data).unwrap();
    let executor = Executor::build(
        ctx,
        g.clone(),
        ExecutorOptions {
            fusion: Fusion::Fused,
            tuning: Tuning::Off,
            ..ExecutorOptions::default()
        },
    )
    .unwrap();
    let planned = executor.forward(&input).unwrap().remove(0).1;
    let (planned_shape, planned) = (planned.shape(), planned.download(ctx).unwrap());
    let input = Tensor::from_slice(ctx, shape, &data).unwrap();
    let op_by_op = run_graph(ctx, &g, vec![(pictures, input)]).remove(0);
    assert_eq!(planned_shape, op_by_op.shape());
    let op_by_op = op_by_op.download(ctx).unwrap();
    let (h, w) = geometry.resized((shape[2], shape[3])).unwrap();
    let longer = h.max(w) as f32;
    let r = options.rpn_post_nms_top_n_test;
    let records = |v: &[f32], img: usize| -> Proposals {
        v[img * r * 6..(img + 1) * r * 6]
            .chunks(6)
            .filter(|p| p[4] >= 0.0)
            .map(|p| ([p[0], p[1], p[2], p[3]], p[4], p[5].to_bits()))
            .collect()
    };
    for img in 0..2 {
        let (got, want) = (records(&planned, img), records(&op_by_op, img));
        let case = format!("random RPN on the FPN, image {img}");
        let (matched, unmatched, box_err, _) = compare(&case, &got, &want, longer, r);
        eprintln!(
            "{case}: {matched} of {} matched, {unmatched} unmatched, max box error {box_err} px",
            want.len()
        );
        assert!(matched > 100);
    }
}
