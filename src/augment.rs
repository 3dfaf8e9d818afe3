//! Training-time augmentation: each training image shifted by a few pixels and, optionally,
//! mirrored left to right, differently at every step.
//!
//! Only pixels move, so an image keeps its label. Pixels shifted in from outside the frame are
//! 0, the background of Fashion-MNIST and MNIST. Every choice comes from a generator seeded by
//! (seed, epoch, step) and is drawn for the whole global batch, so a resumed run, the CPU and
//! the GPU paths, and every rank of a multi-host job see the same images. Validation and test
//! data are never augmented.

use anyhow::Result;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::config::TrainConfig;
use crate::data::Shape;
use crate::error::user;
use crate::model;

/// Augmentation settings for images of one shape; a pixel's channels move together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Augment {
    shift: usize,
    flip: bool,
    rows: usize,
    cols: usize,
    channels: usize,
}

/// What happens to one image: a flip first (when set), then a shift by `dy` rows down and `dx`
/// columns right.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Move {
    pub dy: i32,
    pub dx: i32,
    pub flip: bool,
}

/// Tags the augmentation's generator apart from the dropout masks', which use the layer index
/// (below 16) in the same place.
const STREAM: u64 = 0xA0_6000;

impl Augment {
    /// The configured augmentation for images of `shape`; `None` when it is off. A shift that
    /// would move every pixel out of the frame is a user error.
    pub fn new(cfg: &TrainConfig, shape: Shape) -> Result<Option<Self>> {
        let (rows, cols, channels) = (shape.rows, shape.cols, shape.channels);
        let (shift, flip) = (cfg.augment_shift, cfg.augment_flip);
        if shift == 0 && !flip {
            return Ok(None);
        }
        if shift >= rows.min(cols) {
            return Err(user(format!(
                "hyperparameter \"augment_shift\": value {shift} is not below the training \
                 images' size {rows}×{cols} (allowed: 0 to {})",
                rows.min(cols).saturating_sub(1)
            )));
        }
        Ok(Some(Self { shift, flip, rows, cols, channels }))
    }

    /// The moves for every row of step `step`'s batch of `batch` images.
    pub fn moves(&self, seed: u64, epoch: usize, step: usize, batch: usize) -> Vec<Move> {
        let mut rng =
            ChaCha8Rng::seed_from_u64(model::mix([seed, epoch as u64, step as u64, STREAM]));
        let s = self.shift as i32;
        (0..batch)
            .map(|_| {
                let (dy, dx) =
                    if s > 0 { (rng.gen_range(-s..=s), rng.gen_range(-s..=s)) } else { (0, 0) };
                Move { dy, dx, flip: self.flip && rng.gen_bool(0.5) }
            })
            .collect()
    }

    /// Where output pixel `(r, c)` comes from in the original image (row-major pixel index),
    /// or `None` when it was shifted in from outside the frame.
    fn source(&self, m: Move, r: usize, c: usize) -> Option<usize> {
        let sr = r as i64 - m.dy as i64;
        let sc = c as i64 - m.dx as i64;
        if sr < 0 || sc < 0 || sr >= self.rows as i64 || sc >= self.cols as i64 {
            return None;
        }
        let sc = if m.flip { self.cols as i64 - 1 - sc } else { sc };
        Some(sr as usize * self.cols + sc as usize)
    }

    /// Writes image `src` (one image's bytes) moved by `m` into `out` as floats times `scale`.
    pub fn apply(&self, src: &[u8], m: Move, scale: f32, out: &mut [f32]) {
        let ch = self.channels;
        for (r, row) in out.chunks_exact_mut(self.cols * ch).enumerate() {
            for (c, px) in row.chunks_exact_mut(ch).enumerate() {
                match self.source(m, r, c) {
                    Some(i) => {
                        for (o, &v) in px.iter_mut().zip(&src[i * ch..(i + 1) * ch]) {
                            *o = v as f32 * scale;
                        }
                    }
                    None => px.fill(0.0),
                }
            }
        }
    }

    /// For tensor devices: for each image and output value, the index of its source in a row
    /// of `rows × cols × channels + 1` values whose last value is 0 (what a gather reads for
    /// shifted-in pixels). Row-major `moves.len() × (rows × cols × channels)`.
    pub fn source_index(&self, moves: &[Move]) -> Vec<i64> {
        let ch = self.channels;
        let zero = (self.rows * self.cols * ch) as i64;
        let mut idx = Vec::with_capacity(moves.len() * zero as usize);
        for &m in moves {
            for r in 0..self.rows {
                for c in 0..self.cols {
                    let src = self.source(m, r, c);
                    for k in 0..ch {
                        idx.push(src.map_or(zero, |i| (i * ch + k) as i64));
                    }
                }
            }
        }
        idx
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aug(shift: usize, flip: bool) -> Augment {
        let cfg = TrainConfig { augment_shift: shift, augment_flip: flip, ..Default::default() };
        Augment::new(&cfg, Shape::new(3, 4, 1)).unwrap().unwrap()
    }

    #[test]
    fn off_by_default_and_a_shift_must_leave_pixels_in_the_frame() {
        assert_eq!(Augment::new(&TrainConfig::default(), Shape::new(28, 28, 1)).unwrap(), None);
        let cfg = TrainConfig { augment_shift: 3, ..Default::default() };
        let err = Augment::new(&cfg, Shape::new(3, 4, 1)).unwrap_err().to_string();
        assert!(err.contains("augment_shift") && err.contains("3×4"), "{err}");
    }

    #[test]
    fn a_move_shifts_and_mirrors_pixels_and_fills_with_zero() {
        let img: Vec<u8> = (1..=12).collect();
        let mut out = vec![0f32; 12];
        let a = aug(1, true);
        a.apply(&img, Move::default(), 1.0, &mut out);
        assert_eq!(out, img.iter().map(|&p| p as f32).collect::<Vec<_>>());
        // One row down, one column right: the first row and column are background.
        a.apply(&img, Move { dy: 1, dx: 1, flip: false }, 1.0, &mut out);
        assert_eq!(out, [0., 0., 0., 0., 0., 1., 2., 3., 0., 5., 6., 7.]);
        // Mirrored, then one column left.
        a.apply(&img, Move { dy: 0, dx: -1, flip: true }, 0.5, &mut out);
        assert_eq!(out, [1.5, 1., 0.5, 0., 3.5, 3., 2.5, 0., 5.5, 5., 4.5, 0.]);
    }

    #[test]
    fn the_gather_index_reads_the_same_pixels_as_apply() {
        let img: Vec<u8> = (1..=12).collect();
        let a = aug(2, true);
        let moves = a.moves(7, 1, 3, 20);
        let idx = a.source_index(&moves);
        let mut padded = img.clone();
        padded.push(0);
        let mut out = vec![0f32; 12];
        for (m, row) in moves.iter().zip(idx.chunks(12)) {
            a.apply(&img, *m, 1.0, &mut out);
            let gathered: Vec<f32> = row.iter().map(|&i| padded[i as usize] as f32).collect();
            assert_eq!(out, gathered, "{m:?}");
        }
    }

    #[test]
    fn rgb_pixels_move_with_their_channels_alike() {
        let cfg = TrainConfig { augment_shift: 1, augment_flip: true, ..Default::default() };
        let a = Augment::new(&cfg, Shape::new(2, 3, 3)).unwrap().unwrap();
        // Pixel p has channels (10p, 10p+1, 10p+2).
        let img: Vec<u8> = (0..6u8).flat_map(|p| [10 * p, 10 * p + 1, 10 * p + 2]).collect();
        let mut out = vec![0f32; 18];
        a.apply(&img, Move { dy: 0, dx: 1, flip: true }, 1.0, &mut out);
        // Mirrored rows (2 1 0 / 5 4 3), then shifted right by one with 0 let in.
        let px = |p: f32| [10.0 * p, 10.0 * p + 1.0, 10.0 * p + 2.0];
        let want: Vec<f32> = [[0.0; 3], px(2.0), px(1.0), [0.0; 3], px(5.0), px(4.0)].concat();
        assert_eq!(out, want);
        let moves = a.moves(1, 2, 3, 10);
        let mut padded = img.clone();
        padded.push(0);
        for (m, row) in moves.iter().zip(a.source_index(&moves).chunks(18)) {
            a.apply(&img, *m, 1.0, &mut out);
            let gathered: Vec<f32> = row.iter().map(|&i| padded[i as usize] as f32).collect();
            assert_eq!(out, gathered, "{m:?}");
        }
    }

    #[test]
    fn moves_are_seeded_by_step_and_cover_the_range() {
        let a = aug(2, true);
        let moves = a.moves(1, 2, 3, 2000);
        assert_eq!(moves, a.moves(1, 2, 3, 2000));
        assert_ne!(moves, a.moves(1, 2, 4, 2000));
        assert_ne!(moves, a.moves(1, 3, 3, 2000));
        assert_ne!(moves, a.moves(2, 2, 3, 2000));
        // A longer batch starts with the same moves: ranks taking rows of one batch agree.
        assert_eq!(moves[..100], a.moves(1, 2, 3, 100)[..]);
        for d in -2..=2 {
            assert!(moves.iter().any(|m| m.dy == d) && moves.iter().any(|m| m.dx == d));
        }
        let flips = moves.iter().filter(|m| m.flip).count();
        assert!((800..1200).contains(&flips), "{flips} of 2000 flipped");
        assert!(aug(0, true).moves(1, 2, 3, 50).iter().all(|m| m.dy == 0 && m.dx == 0));
        assert!(aug(1, false).moves(1, 2, 3, 50).iter().all(|m| !m.flip));
    }
}
