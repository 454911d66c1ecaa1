//! Graph passes and the executor on a small graph: what fuses, what must not, and that the
//! fused, unfused and CPU-reference results agree.

mod common;

use std::sync::Arc;

use common::{assert_close, gpu};
use fpn_wgpu::graph::executor::{Algorithms, Executor};
use fpn_wgpu::graph::ops::{Add, BatchNorm, Conv2d, Relu, UpsampleAdd};
use fpn_wgpu::graph::{passes, Graph, HostBatchNorm, HostConv};
use fpn_wgpu::kernels::conv2d::{coop, Conv2dOptions};
use fpn_wgpu::reference;
use fpn_wgpu::rng::SplitMix64;
use fpn_wgpu::tensor::MemoryFormat;
use fpn_wgpu::{Fpn, FpnConfig, Precision, Tensor};

const C: usize = 6;

fn conv(rng: &mut SplitMix64, k: usize) -> Arc<HostConv> {
    let shape = [C, C, k, k];
    Arc::new(HostConv {
        shape,
        weight: rng.vec(C * C * k * k, -0.3, 0.3),
        bias: Some(rng.vec(C, -0.1, 0.1)),
        affine: None,
    })
}

fn bn(rng: &mut SplitMix64) -> Arc<HostBatchNorm> {
    Arc::new(HostBatchNorm {
        mean: rng.vec(C, -0.2, 0.2),
        var: rng.vec(C, 0.5, 2.0),
        weight: rng.vec(C, 0.5, 1.5),
        bias: rng.vec(C, -0.2, 0.2),
        eps: 1e-5,
    })
}

/// input -> conv3x3 -> bn (output "mid") -> relu -> conv1x1 -> bn -> add(input) -> relu ("out")
fn sample_graph() -> (
    Graph,
    Arc<HostConv>,
    Arc<HostBatchNorm>,
    Arc<HostConv>,
    Arc<HostBatchNorm>,
) {
    let mut rng = SplitMix64::new(42);
    let (c1, b1, c2, b2) = (
        conv(&mut rng, 3),
        bn(&mut rng),
        conv(&mut rng, 1),
        bn(&mut rng),
    );
    let mut g = Graph::new();
    let x = g.input();
    let y = g.push(
        "c1",
        Conv2d {
            weights: c1.clone(),
            opts: Conv2dOptions::new(1, 1),
        },
        &[x],
    );
    let mid = g.push("b1", BatchNorm(b1.clone()), &[y]);
    let y = g.push("r1", Relu, &[mid]);
    let y = g.push(
        "c2",
        Conv2d {
            weights: c2.clone(),
            opts: Conv2dOptions::new(1, 0),
        },
        &[y],
    );
    let y = g.push("b2", BatchNorm(b2.clone()), &[y]);
    let y = g.push("add", Add, &[y, x]);
    let out = g.push("r2", Relu, &[y]);
    g.output("mid", mid);
    g.output("out", out);
    (g, c1, b1, c2, b2)
}

#[test]
fn passes_fuse_what_they_may_and_keep_what_is_read() {
    let (mut g, ..) = sample_graph();
    let applied = passes::optimize(&mut g);
    for pass in [
        "fold_batch_norm",
        "fuse_residual_add",
        "fuse_relu",
        "explicit_padding",
    ] {
        assert!(applied.contains(&pass), "{pass} not in {applied:?}");
    }
    let kinds: Vec<&str> = g.nodes().iter().map(|n| n.op.kind()).collect();
    // "mid" is an output before the ReLU, so that ReLU must stay a node of its own; the padded
    // 3x3 conv reads an explicitly padded copy of its input.
    assert_eq!(kinds, ["input", "pad2d", "conv2d", "relu", "conv2d"]);
    let last = &g.nodes()[4];
    assert_eq!(last.inputs, vec![3, 0], "the residual is the graph input");
    assert!(last.op::<Conv2d>().is_some_and(|c| c.opts.relu));
    assert!(
        passes::optimize(&mut g).is_empty(),
        "a second run changes nothing"
    );
}

#[test]
fn fused_unfused_and_reference_agree_and_plans_are_reused() {
    let ctx = gpu();
    let (g, c1, b1, c2, b2) = sample_graph();
    let mut fused_graph = g.clone();
    passes::optimize(&mut fused_graph);
    let fused = Executor::new(ctx, fused_graph).unwrap();
    let unfused = Executor::new(ctx, g).unwrap();

    let mut rng = SplitMix64::new(3);
    for shape in [[2, C, 9, 7], [1, C, 1, 1], [2, C, 9, 7]] {
        let x = rng.vec(shape.iter().product(), -1.0, 1.0);
        // CPU: the same graph, op by op.
        let (y, s) = reference::conv2d(
            &x,
            shape,
            &c1.weight,
            c1.shape,
            c1.bias.as_deref(),
            None,
            None,
            &common::conv_spec(&Conv2dOptions::new(1, 1)),
        );
        let mid = reference::batch_norm(&y, s, &b1.mean, &b1.var, &b1.weight, &b1.bias, b1.eps);
        let r = reference::relu(&mid);
        let (y, s) = reference::conv2d(
            &r,
            s,
            &c2.weight,
            c2.shape,
            c2.bias.as_deref(),
            None,
            None,
            &common::conv_spec(&Conv2dOptions::new(1, 0)),
        );
        let y = reference::batch_norm(&y, s, &b2.mean, &b2.var, &b2.weight, &b2.bias, b2.eps);
        let out = reference::relu(&reference::add(&y, &x));

        let xt = Tensor::from_slice(ctx, shape, &x).unwrap();
        for (label, ex) in [("fused", &fused), ("unfused", &unfused)] {
            let outs = ex.forward(&xt).unwrap();
            assert_eq!(
                outs.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
                ["mid", "out"]
            );
            assert_close(
                &format!("{label} mid {shape:?}"),
                &outs[0].1.download(ctx).unwrap(),
                &mid,
                1e-5,
            );
            assert_close(
                &format!("{label} out {shape:?}"),
                &outs[1].1.download(ctx).unwrap(),
                &out,
                1e-5,
            );
        }
    }
    // The plan for a shape is built once: asking again returns the same one.
    let a = fused.plan([2, C, 9, 7]).unwrap();
    let b = fused.plan([2, C, 9, 7]).unwrap();
    assert!(Arc::ptr_eq(&a, &b));
    assert!(a.activation_bytes() >= a.activation_lower_bound());
}

#[test]
fn outputs_of_one_forward_survive_the_next() {
    let ctx = gpu();
    let (mut g, ..) = sample_graph();
    passes::optimize(&mut g);
    let ex = Executor::new(ctx, g).unwrap();
    let shape = [1, C, 5, 5];
    let first_in = Tensor::from_slice(ctx, shape, &vec![0.5; C * 25]).unwrap();
    let second_in = Tensor::from_slice(ctx, shape, &vec![-0.5; C * 25]).unwrap();
    let first = ex.forward(&first_in).unwrap();
    let first_values = first[1].1.download(ctx).unwrap();
    let second = ex.forward(&second_in).unwrap();
    assert_ne!(second[1].1.download(ctx).unwrap(), first_values);
    assert_eq!(
        first[1].1.download(ctx).unwrap(),
        first_values,
        "a later forward must not overwrite earlier outputs"
    );
}

#[test]
fn fused_upsample_add_matches_the_separate_op() {
    use fpn_wgpu::kernels::upsample_add::UpsampleMode;
    let ctx = gpu();
    let mut rng = SplitMix64::new(8);
    for mode in [UpsampleMode::Bilinear, UpsampleMode::Nearest] {
        // coarse = conv3x3/2(x); out = upsample(coarse) + conv1x1(x): the FPN's top-down merge.
        let mut g = Graph::new();
        let x = g.input();
        let down = Arc::new(HostConv {
            shape: [C, C, 3, 3],
            weight: rng.vec(C * C * 9, -0.3, 0.3),
            bias: None,
            affine: None,
        });
        let coarse = g.push(
            "down",
            Conv2d {
                weights: down,
                opts: Conv2dOptions::new(2, 1),
            },
            &[x],
        );
        let lateral = g.push(
            "lateral",
            Conv2d {
                weights: conv(&mut rng, 1),
                opts: Conv2dOptions::new(1, 0),
            },
            &[x],
        );
        let merged = g.push("merge", UpsampleAdd(mode), &[coarse, lateral]);
        g.output("out", merged);
        let mut fused = g.clone();
        assert!(passes::fuse_upsample_add(&mut fused));
        passes::remove_dead(&mut fused);
        assert!(!fused.nodes().iter().any(|n| n.op.is::<UpsampleAdd>()));
        let xt =
            Tensor::from_slice(ctx, [2, C, 13, 7], &rng.vec(2 * C * 13 * 7, -1.0, 1.0)).unwrap();
        let want = Executor::new(ctx, g).unwrap().forward(&xt).unwrap()[0]
            .1
            .download(ctx)
            .unwrap();
        let got = Executor::new(ctx, fused).unwrap().forward(&xt).unwrap()[0]
            .1
            .download(ctx)
            .unwrap();
        assert_close(&format!("fused upsample-add {mode:?}"), &got, &want, 1e-5);
    }
}

#[test]
fn a_malformed_graph_is_an_error_not_a_panic() {
    let mut g = Graph::new();
    let x = g.input();
    g.push("lonely add", Add, &[x]);
    let msg = g.shapes([1, C, 4, 4]).unwrap_err().to_string();
    assert!(
        msg.contains("lonely add") && msg.contains("inputs"),
        "{msg}"
    );
    // The executor refuses it before any pass reads the missing input.
    let Err(e) = Executor::new(gpu(), g) else {
        panic!("a miswired graph was lowered");
    };
    assert!(e.to_string().contains("lonely add"), "{e}");
}

#[test]
fn the_fpn_memory_plan_is_within_1_3x_of_the_liveness_lower_bound() {
    let ctx = gpu();
    for config in [FpnConfig::seed(), FpnConfig::torchvision([3, 4, 6, 3])] {
        let fpn = Fpn::random(ctx, config, 0).unwrap();
        for shape in [[1, 3, 600, 900], [1, 3, 224, 224], [2, 3, 97, 131]] {
            let plan = fpn.plan(shape).unwrap();
            let ratio = plan.activation_bytes() as f64 / plan.activation_lower_bound() as f64;
            eprintln!(
                "{:?} {shape:?}: {} bytes in {} buffers, lower bound {}, ratio {ratio:.3}",
                config.layout,
                plan.activation_bytes(),
                plan.buffer_count(),
                plan.activation_lower_bound()
            );
            assert!(ratio <= 1.3, "{:?} {shape:?}: ratio {ratio}", config.layout);
        }
    }
}

/// Grouped convolutions stay grouped through the passes and run on the grouped kernel; the
/// `dense_groups` pass (what channels-last networks run) makes the block-diagonal dense
/// convolutions they equal, with the same results at `groups` times the multiply-adds.
#[test]
fn grouped_convolutions_run_grouped_and_their_dense_form_agrees() {
    let ctx = gpu();
    let mut rng = SplitMix64::new(23);
    // input [2, 16, 9, 11] -> 3x3 conv of 4 groups to 32 channels -> bn -> relu
    //                      -> depthwise 3x3 stride 2 -> bn -> relu ("out")
    let mut g = Graph::new();
    let x = g.input();
    let mut grouped = |g: &mut Graph, name: &str, x, cin: usize, cout: usize, groups: usize, s| {
        let shape = [cout, cin / groups, 3, 3];
        let weights = Arc::new(HostConv {
            shape,
            weight: rng.vec(shape.iter().product(), -0.3, 0.3),
            bias: None,
            affine: None,
        });
        let opts = Conv2dOptions::new(s, 1).with_groups(groups);
        let c = g.push(name, Conv2d { weights, opts }, &[x]);
        let bn = Arc::new(HostBatchNorm {
            mean: rng.vec(cout, -0.2, 0.2),
            var: rng.vec(cout, 0.5, 2.0),
            weight: rng.vec(cout, 0.5, 1.5),
            bias: rng.vec(cout, -0.2, 0.2),
            eps: 1e-5,
        });
        let b = g.push(format!("{name}.bn"), BatchNorm(bn), &[c]);
        g.push(format!("{name}.relu"), Relu, &[b])
    };
    let a = grouped(&mut g, "grouped", x, 16, 32, 4, 1);
    let d = grouped(&mut g, "depthwise", a, 32, 32, 32, 2);
    g.output("out", d);
    passes::optimize(&mut g);
    let kinds =
        |g: &Graph| -> Vec<&'static str> { g.nodes().iter().map(|n| n.op.kind()).collect() };
    // The grouped kernel pads per tap: no padding launch before it.
    assert_eq!(kinds(&g), ["input", "conv2d", "conv2d"]);
    let mut dense = g.clone();
    assert!(passes::dense_groups(&mut dense));
    assert!(!passes::dense_groups(&mut dense), "nothing left to expand");
    // Dense, they get their padding made explicit as every dense convolution does.
    assert!(passes::explicit_padding(&mut dense));
    assert_eq!(
        kinds(&dense),
        ["input", "pad2d", "conv2d", "pad2d", "conv2d"]
    );
    let convs: Vec<_> = dense
        .nodes()
        .iter()
        .filter_map(|n| n.op::<Conv2d>())
        .map(|c| (c.weights.shape, c.opts.groups))
        .collect();
    assert_eq!(convs, [([32, 16, 3, 3], 1), ([32, 32, 3, 3], 1)]);

    let shape = [2, 16, 9, 11];
    let xt = Tensor::from_slice(ctx, shape, &rng.vec(2 * 16 * 9 * 11, -1.0, 1.0)).unwrap();
    let half_graph = g.clone();
    let grouped_ex = Executor::new(ctx, g).unwrap();
    let dense_ex = Executor::new(ctx, dense).unwrap();
    let plan = grouped_ex.plan(shape).unwrap();
    let kernels: Vec<&str> = plan
        .kernels()
        .into_iter()
        .map(|(_, k)| k)
        .filter(|k| k.starts_with("conv2d"))
        .collect();
    assert_eq!(kernels, ["conv2d_grouped4", "conv2d_grouped1"]);
    let dense_plan = dense_ex.plan(shape).unwrap();
    assert!(dense_plan
        .kernels()
        .iter()
        .all(|(_, k)| !k.starts_with("conv2d_grouped")));
    // 3x3 over 4 input channels to 32 at 9x11, then over 1 to 32 at 5x6, against 16 and 32.
    let macs = |cin_a: u64, cin_b: u64| 2 * 2 * 9 * (32 * 99 * cin_a + 32 * 30 * cin_b);
    assert_eq!(plan.conv_flops(), macs(4, 1));
    assert_eq!(dense_plan.conv_flops(), macs(16, 32));
    let got = grouped_ex.forward(&xt).unwrap()[0].1.download(ctx).unwrap();
    let want = dense_ex.forward(&xt).unwrap()[0].1.download(ctx).unwrap();
    assert_close("grouped against dense", &got, &want, 1e-5);

    // In f16 the network runs channels-last on cooperative matrices where the device has them
    // (the grouped convolutions expanded to dense ones there), else NCHW on the grouped kernel.
    let Some(ctx) = common::f16_gpu() else { return };
    let half = Executor::with_options(ctx, half_graph, Algorithms::Direct, Precision::F16).unwrap();
    let plan = half.plan(shape).unwrap();
    let ran_grouped = plan
        .kernels()
        .iter()
        .any(|(_, k)| k.starts_with("conv2d_grouped"));
    let channels_last = half.memory_format() == MemoryFormat::ChannelsLast;
    assert_eq!(channels_last, coop::verified(ctx));
    assert_eq!(ran_grouped, !channels_last);
    eprintln!("f16 grouped network: channels-last {channels_last}");
    let got = half.forward(&xt).unwrap()[0].1.download(ctx).unwrap();
    assert_close("f16 grouped network", &got, &want, 1e-2);
}

/// A forward creates no tensors in steady state: its outputs come from a pool per plan, and a
/// set of outputs is reused only once every tensor of it (clones included) has been dropped,
/// so that outputs a caller still holds are never overwritten.
#[test]
fn outputs_are_pooled_and_reused_only_once_dropped() {
    let ctx = gpu();
    let (g, ..) = sample_graph();
    let ex = Executor::new(ctx, g).unwrap();
    let mut rng = SplitMix64::new(9);
    let shape = [1, C, 7, 5];
    let x1 = Tensor::from_slice(ctx, shape, &rng.vec(C * 35, -1.0, 1.0)).unwrap();
    let x2 = Tensor::from_slice(ctx, shape, &rng.vec(C * 35, -1.0, 1.0)).unwrap();
    let values = |outs: &[(String, Tensor)]| -> Vec<Vec<f32>> {
        outs.iter().map(|(_, t)| t.download(ctx).unwrap()).collect()
    };
    let buffers = |outs: &[(String, Tensor)]| -> Vec<wgpu::Buffer> {
        outs.iter().map(|(_, t)| t.buffer().clone()).collect()
    };

    let a = ex.forward(&x1).unwrap();
    let want1 = values(&a);
    let b = ex.forward(&x2).unwrap();
    let want2 = values(&b);
    assert_ne!(want1, want2, "the two inputs must give different outputs");
    for ((_, ta), (_, tb)) in a.iter().zip(&b) {
        assert_ne!(
            ta.buffer(),
            tb.buffer(),
            "a held output was handed out again"
        );
    }
    assert_eq!(values(&a), want1, "a held output was overwritten");

    // Dropped, b's set serves the next forward.
    let b_buffers = buffers(&b);
    drop(b);
    let c = ex.forward(&x2).unwrap();
    assert_eq!(buffers(&c), b_buffers, "a dropped set was not reused");
    assert_eq!(values(&c), want2);
    assert_eq!(values(&a), want1);

    // One clone of one output keeps the whole set out of the pool.
    let kept = c[0].1.clone();
    drop(c);
    let d = ex.forward(&x1).unwrap();
    assert!(d.iter().all(|(_, t)| t.buffer() != kept.buffer()));
    assert_eq!(values(&d), want1);
    assert_eq!(kept.download(ctx).unwrap(), want2[0]);
}

/// Which pass pipelines run is decided in one place, from the fusion setting, the layout and
/// the kind of device; the upsample-add fusion only runs channels-last on GPUs.
#[test]
fn pass_pipelines_follow_fusion_layout_and_device() {
    use fpn_wgpu::graph::passes::{
        pipelines, Fusion, CHANNELS_LAST_CPU, CHANNELS_LAST_GPU, CHANNELS_LAST_PORTABLE,
    };
    let names = |fusion, layout, gpu, coop| -> Vec<&str> {
        pipelines(fusion, layout, gpu, coop)
            .iter()
            .map(|p| p.name)
            .collect()
    };
    let cl = Some(MemoryFormat::ChannelsLast);
    assert_eq!(names(Fusion::Fused, None, true, true), ["fuse"]);
    assert!(names(Fusion::Unfused, None, true, true).is_empty());
    assert!(names(Fusion::Fused, Some(MemoryFormat::Nchw), true, true).is_empty());
    assert_eq!(
        names(Fusion::Fused, cl, true, true),
        [CHANNELS_LAST_GPU.name]
    );
    assert_eq!(
        names(Fusion::Unfused, cl, false, true),
        [CHANNELS_LAST_CPU.name]
    );
    // Channels-last without cooperative matrices (asked for): no halos, which only those
    // kernels write.
    for gpu in [true, false] {
        assert_eq!(
            names(Fusion::Fused, cl, gpu, false),
            [CHANNELS_LAST_PORTABLE.name]
        );
    }
    let has = |p: &passes::Pipeline, pass: &str| p.passes.iter().any(|(n, _)| *n == pass);
    assert!(has(&CHANNELS_LAST_GPU, "fuse_upsample_add"));
    assert!(!has(&CHANNELS_LAST_CPU, "fuse_upsample_add"));
    assert!(!has(&CHANNELS_LAST_PORTABLE, "halo_into_producer"));
    assert!(has(&CHANNELS_LAST_PORTABLE, "explicit_padding"));

    // The executor runs them and reports what changed the graph.
    let (g, ..) = sample_graph();
    let options = fpn_wgpu::graph::executor::ExecutorOptions {
        fusion: Fusion::Fused,
        ..Default::default()
    };
    let ex = Executor::build(gpu(), g, options).unwrap();
    assert!(ex.passes_applied().contains(&"fold_batch_norm"));
    // input, pad, conv, relu, conv: the fused graph of the first test.
    assert_eq!(ex.node_count(), 5);
}

/// `LayoutChoice` forces either layout: channels-last runs the fused graph (on the portable
/// direct kernel, f32 having no cooperative matrices) to the NCHW run's outputs, handed back as
/// NCHW f32 tensors; `Auto` keeps an f32 graph NCHW; an unfused graph (its padding not made
/// explicit, its batch norm not folded: NCHW kernels only) is refused channels-last with the
/// first such op named.
#[test]
fn layout_choice_forces_either_layout_or_says_why_not() {
    use fpn_wgpu::graph::executor::{ExecutorOptions, LayoutChoice};
    use fpn_wgpu::graph::passes::Fusion;
    let ctx = gpu();
    let build = |layout, fusion| {
        let options = ExecutorOptions {
            fusion,
            layout,
            ..ExecutorOptions::default()
        };
        Executor::build(ctx, sample_graph().0, options)
    };
    let auto = build(LayoutChoice::Auto, Fusion::Fused).unwrap();
    assert_eq!(auto.memory_format(), MemoryFormat::Nchw);
    let nchw = build(LayoutChoice::Nchw, Fusion::Fused).unwrap();
    let cl = build(LayoutChoice::ChannelsLast, Fusion::Fused).unwrap();
    assert_eq!(nchw.memory_format(), MemoryFormat::Nchw);
    assert_eq!(cl.memory_format(), MemoryFormat::ChannelsLast);
    assert!(!cl.cooperative());
    let shape = [2, C, 7, 5];
    let x = SplitMix64::new(3).vec(shape.iter().product(), -1.0, 1.0);
    let xt = Tensor::from_slice(ctx, shape, &x).unwrap();
    let want = nchw.forward(&xt).unwrap();
    let got = cl.forward(&xt).unwrap();
    for ((name, g), (_, w)) in got.iter().zip(&want) {
        assert_eq!(g.memory_format(), MemoryFormat::Nchw, "{name}");
        assert_eq!(g.precision(), Precision::F32, "{name}");
        let (g, w) = (g.download(ctx).unwrap(), w.download(ctx).unwrap());
        assert_close(&format!("{name}: channels-last"), &g, &w, 1e-5);
    }
    let e = build(LayoutChoice::ChannelsLast, Fusion::Unfused)
        .err()
        .expect("an unfused graph cannot be channels-last")
        .to_string();
    assert!(
        e.contains("`c1` (conv2d)") && e.contains("unfused") && e.contains("LayoutChoice::Nchw"),
        "{e}"
    );
    assert_eq!(
        "nhwc".parse::<LayoutChoice>(),
        Ok(LayoutChoice::ChannelsLast)
    );
    assert!("planar"
        .parse::<LayoutChoice>()
        .unwrap_err()
        .contains("channels-last"));
}
