//! JPEG decoding against libjpeg-turbo, which is what PIL and torchvision.io give a PyTorch
//! pipeline. The fixtures (`tests/fixtures/make_jpeg_fixtures.py`) are small JPEGs of every kind
//! (baseline and progressive; 4:2:0, 4:2:2 and 4:4:4 chroma; gray; Adobe CMYK) with the RGB
//! pixels PIL 13 (libjpeg-turbo 3.2) decodes from each.
//!
//! Measured on these fixtures, max |difference| in levels and the share of values that differ:
//!
//! | case | image crate (zune-jpeg 0.5) | jpeg-decoder 0.3 | libjpeg-turbo (MozJPEG build) |
//! | --- | --- | --- | --- |
//! | baseline 4:2:0 | 4, 28.4% | 3, 8.6% | 0 |
//! | baseline 4:2:2 | 3, 14.2% | 3, 17.3% | 0 |
//! | baseline 4:4:4 | 2, 1.8% | 3, 5.3% | 0 |
//! | progressive 4:2:0 | 3, 25.3% | 2, 8.1% | 0 |
//! | progressive 4:4:4 | 2, 1.5% | 3, 4.6% | 0 |
//! | gray | 1, 0.9% | 1, 2.6% | 0 |
//! | CMYK | 1, 1.2% | (not compared) | (CMYK out; PIL converts) |
//!
//! So with the `libjpeg-turbo` feature `load_image` decodes with libjpeg-turbo and must give
//! PIL's pixels exactly, CMYK (left to the image crate) within 1 level; without it, the image
//! crate's decoder must stay within the levels measured above.

mod common;

use std::path::{Path, PathBuf};

use fpn_wgpu::image_input::load_image;
use fpn_wgpu::jpeg::LIBJPEG_TURBO;

const CASES: &[&str] = &[
    "baseline_420",
    "baseline_422",
    "baseline_444",
    "progressive_420",
    "progressive_444",
    "gray",
    "cmyk",
];

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/jpeg")
        .join(name)
}

/// (max |difference|, share of values that differ) between two RGB pictures.
fn difference(got: &image::RgbImage, want: &image::RgbImage) -> (u8, f64) {
    assert_eq!(got.dimensions(), want.dimensions());
    let (mut max, mut differ) = (0u8, 0usize);
    for (a, b) in got.as_raw().iter().zip(want.as_raw()) {
        let d = a.abs_diff(*b);
        max = max.max(d);
        differ += usize::from(d > 0);
    }
    (max, differ as f64 / got.as_raw().len() as f64)
}

#[test]
fn jpeg_pixels_match_libjpeg_turbo_as_pil_decodes_them() {
    for case in CASES {
        let jpeg = fixture(&format!("{case}.jpg"));
        let pil = image::open(fixture(&format!("{case}.png")))
            .unwrap()
            .to_rgb8();

        // The pure-Rust decoder, whatever the feature: it must not drift further.
        let rust = image::open(&jpeg).unwrap().to_rgb8();
        let (max_rust, share_rust) = difference(&rust, &pil);
        let bound = match *case {
            "baseline_420" => 4,
            "baseline_422" | "progressive_420" => 3,
            "baseline_444" | "progressive_444" => 2,
            _ => 1,
        };
        eprintln!(
            "{case}: image crate max {max_rust}, {:.1}% differ",
            share_rust * 100.0
        );
        assert!(
            max_rust <= bound,
            "{case}: the image crate's decoder is {max_rust} levels off"
        );

        // What the crate's picture input gives.
        let input = load_image(&jpeg, None).unwrap();
        let (max, share) = difference(&input.rgb, &pil);
        eprintln!(
            "{case}: load_image ({}) max {max}, {:.1}% differ",
            if LIBJPEG_TURBO {
                "libjpeg-turbo"
            } else {
                "image crate"
            },
            share * 100.0
        );
        match (LIBJPEG_TURBO, *case) {
            (true, "cmyk") => assert!(max <= 1, "{case}: {max}"),
            (true, _) => assert_eq!(max, 0, "{case}: libjpeg-turbo gives PIL's pixels"),
            (false, _) => assert_eq!(input.rgb, rust, "{case}: the image crate decodes"),
        }
    }
}

#[test]
fn broken_jpegs_are_errors_or_pictures_never_panics() {
    let bytes = std::fs::read(fixture("baseline_420.jpg")).unwrap();
    let scratch = common::scratch("jpeg");
    let dir = scratch.path();
    for (name, cut) in [("head", 200), ("half", bytes.len() / 2)] {
        let path = dir.join(format!("{name}.jpg"));
        std::fs::write(&path, &bytes[..cut]).unwrap();
        match load_image(&path, None) {
            // libjpeg-turbo fills what is missing (with a warning), as PIL does with
            // ImageFile.LOAD_TRUNCATED_IMAGES.
            Ok(input) => assert_eq!(input.rgb.dimensions(), (61, 47), "{name}"),
            Err(e) => assert!(
                e.to_string().contains("cannot decode the image"),
                "{name}: {e}"
            ),
        }
    }
}
