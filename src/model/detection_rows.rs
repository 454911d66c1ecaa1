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
    /// Where each picture's masks lie among Mask R-CNN's mask slots, `slots` (D) per picture,
    /// numbered across the batch: its K detections' masks are the first K of its D slots, since
    /// the NMS writes the kept records first and the mask of slot k is record k's.
    pub(crate) fn mask_slots(found: &[Detections], slots: usize) -> Vec<std::ops::Range<usize>> {
        found
            .iter()
            .enumerate()
            .map(|(i, det)| i * slots..i * slots + det.len().min(slots))
            .collect()
    }

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
        let slots = Self::mask_slots(&found[..n], d);
        for (det, range) in found.iter_mut().zip(slots) {
            det.masks = Some(Masks {
                height: h,
                width: w,
                data: masks.data[range.start * h * w..range.end * h * w].to_vec(),
            });
        }
        Ok(found)
    }
}
