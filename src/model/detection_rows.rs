//! A detector's output read back to the host: the `[N, 1, D, 6]` rows [`Detector::forward`]
//! leaves on the GPU, as each picture's [`Detections`]. Pipelines that read the rows back
//! themselves (`extract`, a batch at a time) turn them into detections here.
//!
//! [`Detector::forward`]: crate::Detector::forward

use crate::error::{Error, Result};
use crate::kernels::box_decode::RECORD;
use crate::model::Detections;
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
}
