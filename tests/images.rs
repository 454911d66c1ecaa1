//! Pictures in and out: decoding and normalisation, energy maps and the overview, and the
//! `fpn run --image` command on the seed and torchvision layouts with the bad pictures a user may hand it.

mod common;

use std::path::{Path, PathBuf};

use common::gpu;
use fpn_wgpu::image_input::{
    from_picture, from_picture_with, load_image, load_image_with, ExifOrientation, ImageOptions,
    PixelScale, GRAY_MEAN_STD, IMAGENET_MEAN, IMAGENET_STD,
};
use fpn_wgpu::tensor_file::{read_tensors, write_tensors, HostTensor, TensorMap};
use fpn_wgpu::visualize::{colour_map, energy, overview};
use fpn_wgpu::{Fpn, FpnConfig, Tensor};
use image::metadata::Orientation;
use image::{DynamicImage, GrayImage, ImageFormat, Luma, Rgb, RgbImage, Rgba, RgbaImage};

/// A picture with structure at every scale: gradients plus a bright disc.
fn test_picture(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        let (dx, dy) = (x as f32 - w as f32 / 3.0, y as f32 - h as f32 / 2.0);
        let disc = dx * dx + dy * dy < (h as f32 / 4.0).powi(2);
        Rgb([
            (x * 255 / w) as u8,
            (y * 255 / h) as u8,
            if disc { 250 } else { 20 },
        ])
    })
}

fn save_picture(dir: &Path, picture: &DynamicImage, name: &str, format: ImageFormat) -> PathBuf {
    let path = dir.join(name);
    picture.save_with_format(&path, format).unwrap();
    path
}

/// Runs the `fpn` binary; returns (exit code, stderr).
fn fpn_cli(args: &[&str]) -> (i32, String) {
    let out = common::fpn_command().args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn run_image(image: &Path, out: &Path, extra: &[&str]) -> (i32, String) {
    let mut args = vec![
        "run",
        "--image",
        image.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    fpn_cli(&args)
}

#[test]
fn pixels_are_normalised_as_torchvision_does() {
    let picture = test_picture(40, 36);
    let input = from_picture(&DynamicImage::ImageRgb8(picture.clone()), None).unwrap();
    assert_eq!(input.tensor.shape, vec![1, 3, 36, 40]);
    for (x, y) in [(0, 0), (39, 35), (13, 18)] {
        let px = picture.get_pixel(x, y);
        for c in 0..3 {
            let got = input.tensor.data[c * 36 * 40 + y as usize * 40 + x as usize];
            let want = (px[c] as f64 / 255.0 - IMAGENET_MEAN[c] as f64) / IMAGENET_STD[c] as f64;
            assert!((got as f64 - want).abs() < 1e-6, "{x},{y} channel {c}");
        }
    }
}

#[test]
fn detection_pictures_are_rgb_in_zero_to_one_and_gray_likewise() {
    let picture = test_picture(40, 36);
    let input = from_picture_with(
        &DynamicImage::ImageRgb8(picture.clone()),
        &ImageOptions::detection(),
    )
    .unwrap();
    assert_eq!(ImageOptions::detection().scale, PixelScale::Unit);
    assert_eq!(input.tensor.shape, vec![1, 3, 36, 40]);
    // Exactly v / 255, channel planes one after another: what torchvision's ToTensor gives.
    let want: Vec<f32> = (0..3)
        .flat_map(|c| picture.pixels().map(move |p| p.0[c] as f32 / 255.0))
        .collect();
    assert_eq!(input.tensor.data, want);
    assert_eq!(input.rgb, picture);
    let gray = ImageOptions {
        channels: 1,
        ..ImageOptions::detection()
    };
    let input = from_picture_with(&DynamicImage::ImageRgb8(picture), &gray).unwrap();
    let want: Vec<f32> = input.rgb.pixels().map(|p| p.0[0] as f32 / 255.0).collect();
    assert_eq!(input.tensor.data, want);
}

#[test]
fn downscaling_keeps_the_aspect_ratio_and_small_and_thin_pictures_are_accepted() {
    let picture = DynamicImage::ImageRgb8(test_picture(200, 100));
    let input = from_picture(&picture, Some(64)).unwrap();
    assert_eq!(input.tensor.shape, vec![1, 3, 32, 64]);
    assert_eq!(input.original_size, (200, 100));
    assert_eq!((input.rgb.width(), input.rgb.height()), (64, 32));
    // Already small enough: untouched.
    let input = from_picture(&picture, Some(500)).unwrap();
    assert_eq!(input.tensor.shape, vec![1, 3, 100, 200]);

    // Every layer keeps at least one pixel, so no picture is too small: 20x28, 1x1, and a thin
    // 2000x45 strip downscaled to 800x18.
    for ((w, h), max, want) in [
        ((20, 28), None, [28, 20]),
        ((1, 1), None, [1, 1]),
        ((2000, 45), Some(800), [18, 800]),
        ((3, 900), Some(100), [100, 1]),
    ] {
        let input = from_picture(&DynamicImage::ImageRgb8(test_picture(w, h)), max).unwrap();
        assert_eq!(input.tensor.shape, vec![1, 3, want[0], want[1]], "{w}x{h}");
    }
    let msg = match from_picture(&picture, Some(0)) {
        Ok(_) => panic!("a max size of 0 leaves nothing"),
        Err(e) => e.to_string(),
    };
    assert!(
        msg.contains("max size 0 leaves no pixels: give a max size of at least 1"),
        "{msg}"
    );
}

#[test]
fn one_channel_models_get_pil_gray_values_normalised_by_imagenet_luma() {
    let picture = test_picture(23, 17);
    let options = ImageOptions {
        channels: 1,
        ..ImageOptions::default()
    };
    let input = from_picture_with(&DynamicImage::ImageRgb8(picture.clone()), &options).unwrap();
    assert_eq!(input.tensor.shape, vec![1, 1, 17, 23]);
    let (mean, std) = GRAY_MEAN_STD;
    // ImageNet's means and deviations weighted by 601-2 luma (what PIL's convert("L") uses).
    assert!((mean - 0.458_971).abs() < 1e-6 && (std - 0.225_609).abs() < 1e-6);
    for (x, y) in [(0, 0), (22, 16), (7, 9)] {
        let [r, g, b] = picture.get_pixel(x, y).0.map(f64::from);
        // PIL: L = R * 299/1000 + G * 587/1000 + B * 114/1000, rounded.
        let gray = (r * 0.299 + g * 0.587 + b * 0.114).round();
        let want = (gray / 255.0 - mean as f64) / std as f64;
        let got = input.tensor.data[y as usize * 23 + x as usize] as f64;
        assert!((got - want).abs() < 1e-5, "{x},{y}: {got} against {want}");
    }
    let options = ImageOptions {
        channels: 4,
        ..ImageOptions::default()
    };
    let e = from_picture_with(&DynamicImage::ImageRgb8(picture), &options).unwrap_err();
    assert!(e.to_string().contains("`fpn run --input`"), "{e}");
}

#[test]
fn exif_orientation_is_applied_by_default_and_kept_on_request() {
    let scratch = common::scratch("images");
    let dir = scratch.path();
    let path = dir.join("portrait.jpg");
    common::jpeg_with_orientation_6(&path);
    let upright = load_image(&path, None).unwrap();
    assert_eq!(
        upright.tensor.shape,
        vec![1, 3, 32, 16],
        "displayed: 16 wide, 32 high"
    );
    assert_eq!(upright.original_size, (32, 16));
    assert_eq!(upright.orientation, (Orientation::Rotate90, true));
    let options = ImageOptions {
        orientation: ExifOrientation::Ignore,
        ..ImageOptions::default()
    };
    let stored = load_image_with(&path, &options).unwrap();
    assert_eq!(stored.tensor.shape, vec![1, 3, 16, 32]);
    assert_eq!(stored.orientation, (Orientation::Rotate90, false));
    // Turned a quarter clockwise: the stored bottom-left corner (no red, no green) is now the
    // top-left one, the stored top-left (red and green) the top-right.
    assert_eq!(upright.rgb.dimensions(), (16, 32));
    assert_eq!(
        upright.rgb,
        image::imageops::rotate90(&stored.rgb),
        "the applied picture is the stored one turned clockwise"
    );
    let px = |x, y| upright.rgb.get_pixel(x, y).0;
    assert!(px(1, 1)[0] > 200 && px(1, 1)[1] < 60, "{:?}", px(1, 1));
    assert!(px(14, 1)[0] > 200 && px(14, 1)[1] > 200, "{:?}", px(14, 1));

    // The CLI says what it did, and keeps the stored pixels when asked.
    let out = dir.join("portrait-out");
    let (code, err) = run_image(&path, &out, &["--blocks", "1,1,1,1"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("EXIF orientation Rotate90 applied"), "{err}");
    let levels = read_tensors(&out.join("pyramid.safetensors"), |_| false).unwrap();
    assert_eq!(levels["p2"].shape, vec![1, 256, 8, 4]);
    let (code, err) = run_image(
        &path,
        &out,
        &["--blocks", "1,1,1,1", "--keep-stored-orientation"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("EXIF orientation Rotate90 ignored"), "{err}");
    let levels = read_tensors(&out.join("pyramid.safetensors"), |_| false).unwrap();
    assert_eq!(levels["p2"].shape, vec![1, 256, 4, 8]);
}

#[test]
fn cli_runs_small_thin_and_grayscale_model_pictures() {
    let scratch = common::scratch("images");
    let dir = scratch.path();
    let small = save_picture(
        dir,
        &DynamicImage::ImageRgb8(test_picture(20, 28)),
        "small-20x28.png",
        ImageFormat::Png,
    );
    let out = dir.join("small-out");
    let (code, err) = run_image(&small, &out, &["--blocks", "1,1,1,1", "-q"]);
    assert_eq!(code, 0, "{err}");
    let levels = read_tensors(&out.join("pyramid.safetensors"), |_| false).unwrap();
    assert_eq!(levels["p2"].shape, vec![1, 256, 7, 5]);
    assert_eq!(levels["p5"].shape, vec![1, 256, 1, 1]);

    let thin = save_picture(
        dir,
        &DynamicImage::ImageRgb8(test_picture(2000, 45)),
        "thin-2000x45.png",
        ImageFormat::Png,
    );
    let (code, err) = run_image(&thin, &out, &["--blocks", "1,1,1,1", "--max-size", "800"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("network input [1, 3, 18, 800]"), "{err}");

    // A model of 1-channel pictures: the picture becomes gray, as the library makes it.
    let config = FpnConfig {
        in_channels: 1,
        ..FpnConfig::torchvision([1, 1, 1, 1])
    };
    let weights = dir.join("gray-model.safetensors");
    let dict = Fpn::random_state_dict(config, 6).unwrap();
    write_tensors(&weights, dict.iter().map(|(n, t)| (n.as_str(), t))).unwrap();
    let (code, err) = run_image(&small, &out, &["--weights", weights.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("converted to gray, network input [1, 1, 28, 20]"),
        "{err}"
    );
    let levels = read_tensors(&out.join("pyramid.safetensors"), |_| false).unwrap();
    let ctx = gpu();
    let options = ImageOptions {
        channels: 1,
        ..ImageOptions::default()
    };
    let input = load_image_with(&small, &options).unwrap();
    let fpn = Fpn::from_safetensors(ctx, &weights).unwrap();
    let x = Tensor::from_slice(ctx, [1, 1, 28, 20], &input.tensor.data).unwrap();
    for (name, t) in fpn.forward(&x).unwrap().download(ctx).unwrap() {
        assert_eq!(levels[&name], t, "{name} from the CLI and from the library");
    }
}

#[test]
fn energy_is_the_channel_l2_norm_and_maps_to_a_bright_ramp() {
    // Two images, two channels, 1x3: image 1 holds (3, 4) -> 5 at pixel 0.
    let level = HostTensor {
        shape: vec![2, 2, 1, 3],
        data: vec![
            1.0, 0.0, 0.0, 0.0, 1.0, 0.0, // image 0
            3.0, 0.0, 2.0, 4.0, 0.0, 0.0, // image 1
        ],
    };
    let (h, w, e) = energy(&level, 1).unwrap();
    assert_eq!((h, w), (1, 3));
    assert_eq!(e, vec![5.0, 0.0, 2.0]);
    assert!(energy(&level, 2).is_err());
    let picture = colour_map(1, 3, &e);
    let brightness = |x: u32| {
        picture
            .get_pixel(x, 0)
            .0
            .iter()
            .map(|&v| v as u32)
            .sum::<u32>()
    };
    assert!(brightness(0) > brightness(2) && brightness(2) > brightness(1));
    // A flat map and a map with NaN do not divide by zero or panic.
    colour_map(1, 3, &[1.0, 1.0, 1.0]);
    colour_map(1, 3, &[f32::NAN, 1.0, 2.0]);

    let input = test_picture(90, 60);
    let levels = [RgbImage::new(23, 15), RgbImage::new(12, 8)];
    let o = overview(&input, &levels);
    // Each panel at the input's height (60), with 8-pixel gaps around them.
    assert_eq!(o.height(), 60 + 16);
    assert_eq!(o.width(), 90 + 92 + 90 + 4 * 8);
}

#[test]
fn cli_runs_a_picture_through_both_layouts_and_writes_levels_and_pictures() {
    let scratch = common::scratch("images");
    let dir = scratch.path();
    let picture = test_picture(96, 72);
    let png = save_picture(
        dir,
        &DynamicImage::ImageRgb8(picture.clone()),
        "scene.png",
        ImageFormat::Png,
    );

    // Seed layout, seeded random weights: the levels equal the library's on the same input.
    let out = dir.join("seed-out");
    let (code, err) = run_image(&png, &out, &["--blocks", "1,1,1,1"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("forward on [1, 3, 72, 96]"), "progress: {err}");
    let levels = read_tensors(&out.join("pyramid.safetensors"), |_| false).unwrap();
    assert_eq!(levels.keys().collect::<Vec<_>>(), ["p2", "p3", "p4", "p5"]);
    let ctx = gpu();
    let input = load_image(&png, None).unwrap();
    let fpn = Fpn::random(ctx, FpnConfig::with_blocks([1, 1, 1, 1]), 0).unwrap();
    let x = Tensor::from_slice(ctx, [1, 3, 72, 96], &input.tensor.data).unwrap();
    for (name, t) in fpn.forward(&x).unwrap().download(ctx).unwrap() {
        assert_eq!(levels[&name], t, "{name} from the CLI and from the library");
        let png = image::open(out.join(format!("{name}.png"))).unwrap();
        assert_eq!(
            [png.height() as usize, png.width() as usize],
            [t.shape[2], t.shape[3]],
            "{name}.png at the level's resolution"
        );
    }
    let overview = image::open(out.join("overview.png")).unwrap();
    assert!(overview.width() > 5 * 96);

    // torchvision layout from a weights file, as a JPEG, quiet: P2..P6, nothing on stderr.
    let weights = dir.join("tv.safetensors");
    let dict = Fpn::random_state_dict(FpnConfig::torchvision([1, 1, 1, 1]), 4).unwrap();
    write_tensors(&weights, dict.iter().map(|(n, t)| (n.as_str(), t))).unwrap();
    let jpeg = save_picture(
        dir,
        &DynamicImage::ImageRgb8(picture),
        "scene.jpg",
        ImageFormat::Jpeg,
    );
    let out = dir.join("tv-out");
    let w = weights.to_str().unwrap();
    let (code, err) = run_image(&jpeg, &out, &["--weights", w, "--bn-eps", "0", "--quiet"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.is_empty(), "--quiet prints nothing: {err}");
    let levels = read_tensors(&out.join("pyramid.safetensors"), |_| false).unwrap();
    assert_eq!(
        levels.keys().collect::<Vec<_>>(),
        ["p2", "p3", "p4", "p5", "p6"]
    );
    assert_eq!(levels["p6"].shape, vec![1, 256, 2, 2]);
    assert!(out.join("p6.png").exists() && out.join("overview.png").exists());

    // Asking for the other layout than the file's is refused.
    let (code, err) = run_image(&jpeg, &out, &["--weights", w, "--layout", "seed", "-q"]);
    assert_eq!(code, 1);
    assert!(err.contains("torchvision layout, not seed"), "{err}");
}

#[test]
fn cli_converts_grayscale_rgba_and_16_bit_pictures() {
    let scratch = common::scratch("images");
    let dir = scratch.path();
    let gray = GrayImage::from_fn(40, 33, |x, y| Luma([(x * 6 + y) as u8]));
    let rgba = RgbaImage::from_fn(35, 40, |x, y| Rgba([x as u8 * 7, y as u8 * 6, 90, 128]));
    let gray16 = DynamicImage::ImageLuma16(image::ImageBuffer::from_fn(48, 32, |x, y| {
        Luma([(x * 1000 + y * 300) as u16])
    }));
    for (name, picture, hw) in [
        (
            "gray.png",
            DynamicImage::ImageLuma8(gray),
            (33usize, 40usize),
        ),
        ("rgba.png", DynamicImage::ImageRgba8(rgba), (40, 35)),
        ("gray16.png", gray16, (32, 48)),
    ] {
        let path = save_picture(dir, &picture, name, ImageFormat::Png);
        let out = dir.join(format!("{name}-out"));
        let (code, err) = run_image(&path, &out, &["--blocks", "1,1,1,1", "-q"]);
        assert_eq!(code, 0, "{name}: {err}");
        let levels = read_tensors(&out.join("pyramid.safetensors"), |_| false).unwrap();
        assert_eq!(
            levels["p2"].shape,
            vec![1, 256, hw.0.div_ceil(4), hw.1.div_ceil(4)],
            "{name}"
        );
        let input = load_image(&path, None).unwrap();
        assert_eq!(input.tensor.shape, vec![1, 3, hw.0, hw.1]);
    }
}

/// Runs `fpn run --image` expecting exit 1 and one line on stderr containing each of `needles`.
fn assert_refused(dir: &Path, image: &Path, extra: &[&str], needles: &[&str]) {
    let out = dir.join("refused-out");
    let (code, err) = run_image(image, &out, &[extra, &["-q"]].concat());
    assert_eq!(code, 1, "{err}");
    assert!(
        err.trim().lines().count() == 1 && err.starts_with("fpn: error:"),
        "one line: {err}"
    );
    for needle in needles {
        assert!(err.contains(needle), "`{needle}` not in {err}");
    }
}

#[test]
fn cli_refuses_bad_pictures_and_unknown_checkpoints_with_one_line() {
    let scratch = common::scratch("images");
    let dir = scratch.path();
    assert_refused(dir, &dir.join("no-such-picture.png"), &[], &["cannot open"]);

    let text = dir.join("notes.png");
    std::fs::write(&text, "this is not a picture\n").unwrap();
    assert_refused(dir, &text, &[], &["not a JPEG or PNG"]);

    let good = save_picture(
        dir,
        &DynamicImage::ImageRgb8(test_picture(64, 64)),
        "whole.png",
        ImageFormat::Png,
    );
    let bytes = std::fs::read(&good).unwrap();
    let truncated = dir.join("truncated.png");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    assert_refused(dir, &truncated, &[], &["cannot decode"]);

    assert_refused(
        dir,
        &good,
        &["--max-size", "0"],
        &["max size 0 leaves no pixels"],
    );

    // A checkpoint of neither layout: what was found is listed; a ResNet classifier is named.
    let weights = dir.join("foreign.safetensors");
    let w = weights.to_str().unwrap();
    for (names, needles) in [
        (
            &[
                "encoder.stem.weight",
                "encoder.block.weight",
                "decoder.out.bias",
            ][..],
            &["no known layout", "`encoder.*` (2)", "`decoder.*` (1)"][..],
        ),
        (
            &["conv1.weight", "layer1.0.conv1.weight", "fc.weight"][..],
            &["ResNet classifier without FPN weights"][..],
        ),
    ] {
        let tensors: TensorMap = names
            .iter()
            .map(|n| {
                (
                    n.to_string(),
                    HostTensor::new(vec![2], vec![0.0; 2]).unwrap(),
                )
            })
            .collect();
        write_tensors(&weights, tensors.iter().map(|(n, t)| (n.as_str(), t))).unwrap();
        assert_refused(dir, &good, &["--weights", w], needles);
    }

    // Usage errors exit with 2: --image without --out, both sources, --max-size with --input.
    let g = good.to_str().unwrap();
    assert_eq!(fpn_cli(&["run", "--image", g]).0, 2);
    assert_eq!(
        fpn_cli(&["run", "--image", g, "--out", "x", "--input", "a", "--output", "b"]).0,
        2
    );
    assert_eq!(
        fpn_cli(&["run", "--input", "a", "--output", "b", "--max-size", "64"]).0,
        2
    );
}

/// `fpn shapes` for a 600x900 input with `extra` arguments; its stdout, after checking success.
fn shapes_600x900(extra: &[&str]) -> String {
    let out = common::fpn_command()
        .args(["shapes", "--height", "600", "--width", "900"])
        .args(extra)
        .output()
        .unwrap();
    assert!(out.status.success(), "{extra:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn cli_shapes_know_both_layouts() {
    let text = shapes_600x900(&["--layout", "torchvision"]);
    assert!(text.contains("p2: [1, 256, 150, 225]") && text.contains("p6: [1, 256, 10, 15]"));
    let text = shapes_600x900(&[
        "--layout",
        "torchvision",
        "--returned-layers",
        "2,3,4",
        "--extra",
        "p6p7",
    ]);
    assert!(
        !text.contains("p2:") && text.contains("p7: [1, 256, 5, 8]"),
        "{text}"
    );
    let (code, err) = fpn_cli(&[
        "shapes", "--height", "9", "--width", "9", "--layout", "caffe",
    ]);
    assert!(code == 1 && err.contains("unknown layout `caffe`"), "{err}");
}

#[test]
fn cli_runs_in_f16_where_the_adapter_has_it_and_refuses_it_clearly_elsewhere() {
    let scratch = common::scratch("images");
    let dir = scratch.path();
    let image = save_picture(
        dir,
        &DynamicImage::ImageRgb8(test_picture(52, 40)),
        "precision.png",
        ImageFormat::Png,
    );
    let small = ["--blocks", "1,1,1,1", "-q"];
    let out16 = dir.join("f16-out");
    let (code, err) = run_image(
        &image,
        &out16,
        &[&small[..], &["--precision", "f16"]].concat(),
    );
    if common::f16_gpu().is_none() {
        assert_eq!(code, 1, "{err}");
        assert!(err.contains("SHADER_F16") && err.contains("f32"), "{err}");
        return;
    }
    assert_eq!(code, 0, "{err}");
    let out32 = dir.join("f32-out");
    let (code, err) = run_image(&image, &out32, &small);
    assert_eq!(code, 0, "{err}");
    let half = read_tensors(&out16.join("pyramid.safetensors"), |_| false).unwrap();
    let single = read_tensors(&out32.join("pyramid.safetensors"), |_| false).unwrap();
    assert_eq!(half.len(), 4);
    for (name, t) in &single {
        let err = common::max_rel_error(&half[name].data, &t.data);
        assert!(err <= 1e-2, "{name}: f16 against f32 {err:e}");
    }
    let (code, err) = run_image(
        &image,
        &out16,
        &[&small[..], &["--precision", "f8"]].concat(),
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("f32 or f16"), "{err}");
}
