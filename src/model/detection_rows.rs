//! A detector's output read back to the host: the `[N, 1, D, 6]` rows [`Detector::forward`]
//! leaves on the GPU, as each picture's [`Detections`]. Pipelines that read the rows back
//! themselves (`extract`, a batch at a time) turn them into detections here.
//!
//! [`Detector::forward`]: crate::Detector::forward

use crate::error::{Error, Result};
use crate::kernels::box_decode::RECORD;
use crate::model::{Detections, Masks, DETECTIONS, MASKS};
use crate::tensor_file::HostTensor;

impl Detections {
    /// Each picture's detections in `rows`, the values of a `[N, 1, D, 6]` detections tensor:
    /// per slot x1, y1, x2, y2, score and the label's bits; a negative score marks an empty
    /// slot. The same as [`Detector::detect`](crate::Detector::detect) gives for the forward.
    pub fn from_rows(rows: &HostTensor) -> Result<Vec<Detections>> {
        let (n, d) = match rows.shape[..] {
            [n, 1, d, RECORD] if rows.data.len() == n * d * RECORD => (n, d),
            _ => {
                return Err(Error::invalid(
                    "Detections::from_rows",
                    format!(
                        "rows of shape {:?} with {} values; a detector's are [N, 1, D, {RECORD}]",
                        rows.shape,
                        rows.data.len()
                    ),
                ))
            }
        };
        Ok((0..n)
            .map(|i| {
                let mut det = Detections::default();
                for r in rows.data[i * d * RECORD..(i + 1) * d * RECORD].chunks_exact(RECORD) {
                    // Empty slots hold -1 (never NaN: only scores above the threshold are kept).
                    if r[4] < 0.0 {
                        continue;
                    }
                    det.boxes.push([r[0], r[1], r[2], r[3]]);
                    det.scores.push(r[4]);
                    det.labels.push(r[5].to_bits() as i64);
                }
                det
            })
            .collect())
    }

    /// Each picture's detections in a detector's outputs as a pipeline reads them back
    /// ([`BatchNetwork::forward_batch`](crate::model::BatchNetwork::forward_batch)):
    /// `detections` rows as [`Detections::from_rows`] reads them and, for Mask R-CNN, `masks`
    /// `[N, D, H, W]` (picture `i`'s slot `k` at channel `k`), of which each picture keeps its
    /// first K, K its detections.
    pub fn from_outputs(outputs: &[(String, HostTensor)]) -> Result<Vec<Detections>> {
        let find = |name: &str| outputs.iter().find(|(n, _)| n == name).map(|(_, t)| t);
        let rows = find(DETECTIONS).ok_or_else(|| {
            Error::invalid(
                "Detections::from_outputs",
                format!("no `{DETECTIONS}` among the outputs; give a detector's"),
            )
        })?;
        let mut found = Self::from_rows(rows)?;
        let Some(masks) = find(MASKS) else {
            return Ok(found);
        };
        let (n, d, h, w) = match masks.shape[..] {
            [n, d, h, w] if n == found.len() && masks.data.len() == n * d * h * w => (n, d, h, w),
            _ => {
                return Err(Error::invalid(
                    "Detections::from_outputs",
                    format!(
                        "masks of shape {:?} with {} values for {} pictures; a Mask R-CNN's are \
                         [N, D, H, W]",
                        masks.shape,
                        masks.data.len(),
                        found.len()
                    ),
                ))
            }
        };
        for (i, det) in found.iter_mut().enumerate().take(n) {
            let k = det.len().min(d);
            let start = i * d * h * w;
            det.masks = Some(Masks {
                height: h,
                width: w,
                data: masks.data[start..start + k * h * w].to_vec(),
            });
        }
        Ok(found)
    }
}
