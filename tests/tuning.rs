//! Tuning at plan time: every configuration the tuner may pick agrees with the reference, the
//! cache file round-trips between executors, and a corrupt or foreign cache is ignored with a
//! warning, never a crash.

mod common;

use std::sync::Mutex;

use common::{assert_close, gpu};
use fpn_wgpu::graph::tune::TUNE_CACHE_ENV;
use fpn_wgpu::kernels::conv2d::{
    self, strategy, Conv2dOptions, Conv2dWeights, ConvProblem, DeviceProfile, WeightLayout,
};
use fpn_wgpu::reference;
use fpn_wgpu::rng::SplitMix64;
use fpn_wgpu::tensor::MemoryFormat;
use fpn_wgpu::weights::VarStore;
use fpn_wgpu::{Fpn, FpnConfig, FpnOptions, GpuContext, Precision, Tensor, Tuning};

/// The cache path is a process-wide variable, and setting one while another thread reads the
/// environment (wgpu does, building a context) is not safe: every test here takes its turn.
static CACHE_ENV: Mutex<()> = Mutex::new(());

fn turn() -> std::sync::MutexGuard<'static, ()> {
    CACHE_ENV.lock().unwrap_or_else(|p| p.into_inner())
}

fn numel(s: [usize; 4]) -> usize {
    s.iter().product()
}

/// A cache file path in folders that do not exist yet, under the test's own folder.
fn temp_cache(scratch: &tempfile::TempDir) -> std::path::PathBuf {
    scratch.path().join("nested").join("tuning.json")
}

/// Each conv launch's configuration without its source, and the sources, of a plan.
fn configs(fpn: &Fpn, shape: [usize; 4]) -> (Vec<String>, Vec<String>) {
    let plan = fpn.plan(shape).unwrap();
    plan.launches()
        .iter()
        .filter(|(_, k, _)| k.starts_with("conv2d"))
        .map(|(n, k, c)| {
            let (config, source) = c.rsplit_once("; ").unwrap_or(("", c));
            (format!("{n} {k} {config}"), source.to_string())
        })
        .unzip()
}

fn network(ctx: &GpuContext, precision: Precision, tuning: Tuning) -> Fpn {
    let options = FpnOptions::default()
        .with_precision(precision)
        .with_tuning(tuning);
    Fpn::with_options(
        ctx,
        &VarStore::random(4),
        FpnConfig::with_blocks([1, 1, 1, 1]),
        options,
    )
    .unwrap()
}

/// The precisions whose tuning the adapter exercises (f16 where it has it: with cooperative
/// matrices, that is where most candidates are).
fn precisions(ctx: &GpuContext) -> Vec<Precision> {
    let mut p = vec![Precision::F32];
    if ctx.supports_f16() {
        p.push(Precision::F16);
    }
    p
}

#[test]
fn every_candidate_the_tuner_may_pick_matches_the_reference() {
    let _turn = turn();
    let ctx = gpu();
    let mut rng = SplitMix64::new(21);
    let mut worst = 0.0f64;
    let mut runs = 0;
    for precision in precisions(ctx) {
        let coop = precision == Precision::F16 && conv2d::coop::verified(ctx);
        let (weight_layout, layout) = if coop {
            (WeightLayout::TapMajor, MemoryFormat::ChannelsLast)
        } else {
            (WeightLayout::KMajor, MemoryFormat::Nchw)
        };
        // The shapes of the FPN's small maps, where the candidates differ most: a 3x3 on a
        // padded map, a wide 1x1, a stride-2 1x1 shortcut.
        for (input, cout, k, stride) in [
            ([1, 64, 11, 13], 128, 3, 1),
            ([1, 256, 6, 9], 128, 1, 1),
            ([2, 128, 9, 12], 256, 1, 2),
        ] {
            let w_shape = [cout, input[1], k, k];
            let round =
                |v: Vec<f32>| -> Vec<f32> { v.into_iter().map(|x| precision.round(x)).collect() };
            let x = round(rng.vec(numel(input), -1.0, 1.0));
            let bound = (3.0 / (input[1] * k * k) as f32).sqrt();
            let w = round(rng.vec(numel(w_shape), -bound, bound));
            let bias = rng.vec(cout, -0.5, 0.5);
            let opts = Conv2dOptions::new(stride, 0).with_relu(true);
            let (want, _) = reference::conv2d(
                &x,
                input,
                &w,
                w_shape,
                Some(&bias),
                None,
                None,
                &common::conv_spec(&opts),
            );
            let weights = Conv2dWeights::with_precision(
                ctx,
                w_shape,
                &w,
                Some(&bias),
                None,
                weight_layout,
                precision,
            )
            .unwrap();
            let xt = Tensor::from_slice_with(ctx, input, &x, precision, layout).unwrap();
            let problem = ConvProblem::of(&xt, &weights, None, &opts);
            let candidates = strategy::candidates(&problem, &DeviceProfile::of(ctx)).unwrap();
            assert!(candidates.len() > 1, "{input:?}: {candidates:?}");
            let tol = if precision == Precision::F16 {
                1e-3
            } else {
                1e-5
            };
            for choice in candidates {
                let got = conv2d::conv2d_with(ctx, &xt, &weights, None, &opts, Some(choice))
                    .unwrap()
                    .download(ctx)
                    .unwrap();
                let case = format!("{precision} {input:?} -> {cout}, k{k} s{stride}: {choice}");
                worst = worst.max(assert_close(&case, &got, &want, tol));
                runs += 1;
            }
        }
    }
    eprintln!("tuning candidates: {runs} runs, worst max relative error {worst:e}");
}

#[test]
fn tuned_choices_round_trip_through_the_cache_and_agree_with_the_presets() {
    let _turn = turn();
    let ctx = gpu();
    let scratch = common::scratch("tuning-round-trip");
    let path = temp_cache(&scratch);
    std::env::set_var(TUNE_CACHE_ENV, &path);
    let shape = [1, 3, 64, 96];
    for precision in precisions(ctx) {
        let preset = network(ctx, precision, Tuning::Off);
        let tuned = network(ctx, precision, Tuning::Full);
        let (_, preset_sources) = configs(&preset, shape);
        assert!(
            preset_sources.iter().all(|s| s == "preset"),
            "{preset_sources:?}"
        );
        let (tuned_configs, tuned_sources) = configs(&tuned, shape);
        if !ctx.supports_timestamps() {
            // Nothing can be timed here: the cache alone, and it is empty.
            assert_eq!(tuned.executor().tuning(), Tuning::Cache);
            assert!(
                tuned_sources.iter().all(|s| s == "preset"),
                "{tuned_sources:?}"
            );
            continue;
        }
        assert!(
            tuned_sources.iter().any(|s| s == "tuned"),
            "{precision}: {tuned_sources:?}"
        );
        let text = std::fs::read_to_string(&path).expect("the cache was saved");
        assert!(text.contains("fpn-wgpu tuning cache"), "{text}");

        // A second executor, as a second process would build it, reads the same choices.
        let cached = network(ctx, precision, Tuning::Cache);
        let (cached_configs, cached_sources) = configs(&cached, shape);
        assert_eq!(cached_configs, tuned_configs, "{precision}");
        for (t, c) in tuned_sources.iter().zip(&cached_sources) {
            if t == "tuned" {
                assert_eq!(c, "from the tuning cache");
            }
        }

        // Whatever the tuner picked computes what the presets compute.
        let mut rng = SplitMix64::new(3);
        let x = Tensor::from_slice(ctx, shape, &rng.vec(numel(shape), -1.0, 1.0)).unwrap();
        let a = tuned.forward(&x).unwrap();
        let b = preset.forward(&x).unwrap();
        let tol = if precision == Precision::F16 {
            2e-3
        } else {
            1e-5
        };
        for ((name, t), (_, p)) in a.levels().iter().zip(b.levels()) {
            let err = common::max_rel_error(&t.download(ctx).unwrap(), &p.download(ctx).unwrap());
            assert!(err <= tol, "{precision} {name}: tuned vs preset {err:e}");
        }
    }
    std::env::remove_var(TUNE_CACHE_ENV);
}

#[test]
fn corrupt_and_foreign_caches_are_ignored_with_a_warning() {
    let _turn = turn();
    let ctx = gpu();
    let scratch = common::scratch("tuning-corrupt");
    let path = temp_cache(&scratch);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::env::set_var(TUNE_CACHE_ENV, &path);
    let shape = [1, 3, 40, 56];
    let want = configs(&network(ctx, Precision::F32, Tuning::Off), shape).0;
    for contents in [
        "{ not json".to_string(),
        "\u{0}\u{1}binary".to_string(),
        r#"{"format": "another program", "version": 1, "entries": {}}"#.to_string(),
        r#"{"format": "fpn-wgpu tuning cache", "version": 999, "entries": {}}"#.to_string(),
        // Keys that match nothing and codes that parse to nothing valid here.
        r#"{"format": "fpn-wgpu tuning cache", "version": 2, "entries": {"x": "coop/9x9/3", "y": 5}}"#
            .to_string(),
    ] {
        std::fs::write(&path, &contents).unwrap();
        let cached = network(ctx, Precision::F32, Tuning::Cache);
        let (got, sources) = configs(&cached, shape);
        assert_eq!(got, want, "{contents}");
        assert!(sources.iter().all(|s| s == "preset"), "{contents}: {sources:?}");
        if ctx.supports_timestamps() {
            // Tuning replaces a cache it could not read with a valid one.
            let _ = configs(&network(ctx, Precision::F32, Tuning::Full), shape);
            let text = std::fs::read_to_string(&path).unwrap();
            let v: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
            assert_eq!(v["format"], "fpn-wgpu tuning cache");
            assert!(v["entries"].as_object().is_some_and(|e| !e.is_empty()));
        }
    }
    // A cache that cannot be written (a directory in its place) costs a warning, not the plan.
    let _ = std::fs::remove_file(&path);
    std::fs::create_dir_all(&path).unwrap();
    let _ = configs(&network(ctx, Precision::F32, Tuning::Full), shape);
    std::env::remove_var(TUNE_CACHE_ENV);
}

#[test]
fn tuning_modes_parse_and_off_is_deterministic() {
    assert_eq!("off".parse::<Tuning>().unwrap(), Tuning::Off);
    assert_eq!("CACHE".parse::<Tuning>().unwrap(), Tuning::Cache);
    assert_eq!("full".parse::<Tuning>().unwrap(), Tuning::Full);
    let e = "fast".parse::<Tuning>().unwrap_err();
    assert!(e.contains("off, cache, full"), "{e}");
    let _turn = turn();
    let ctx = gpu();
    let a = configs(&network(ctx, Precision::F32, Tuning::Off), [1, 3, 48, 48]);
    let b = configs(&network(ctx, Precision::F32, Tuning::Off), [1, 3, 48, 48]);
    assert_eq!(a, b);
}
