use super::*;
use crate::metrics::EpochMetrics;

fn names() -> Vec<String> {
    crate::config::TrainConfig::default().class_names
}

fn is(px: [u8; 3], c: RGBColor) -> bool {
    px == [c.0, c.1, c.2]
}

enum Tint {
    Red,
    Blue,
}

/// Pixels of (anti-aliased) red or blue in the rectangle.
fn tinted(img: &Picture, (x, y, w, h): (u32, u32, u32, u32), t: Tint) -> usize {
    let mut n = 0;
    for yy in y..y + h {
        for xx in x..x + w {
            let [r, g, b] = img.get_pixel(xx, yy).map(i32::from);
            n += match t {
                Tint::Red => r - g > 60 && r - b > 60,
                Tint::Blue => b - r > 60,
            } as usize;
        }
    }
    n
}

/// Pixels that are neither white nor near-white.
fn inked(img: &Picture, (x, y, w, h): (u32, u32, u32, u32)) -> usize {
    let mut n = 0;
    for yy in y..y + h {
        for xx in x..x + w {
            n += (img.get_pixel(xx, yy).iter().map(|&v| v as u32).sum::<u32>() < 600) as usize;
        }
    }
    n
}

/// 28×28 images whose pixel (r, c) is `(i * 7 + r * 3 + c * 5) % 256`.
fn gradient_images(n: usize) -> Vec<u8> {
    (0..n)
        .flat_map(|i| {
            (0..28 * 28).map(move |j| ((i * 7 + (j / 28) * 3 + (j % 28) * 5) % 256) as u8)
        })
        .collect()
}

#[test]
fn thousands_are_separated() {
    let got: Vec<String> = [0, 999, 1000, 10000, 1234567].map(thousands).into();
    assert_eq!(got, ["0", "999", "1,000", "10,000", "1,234,567"]);
}

#[test]
fn images_fit_their_box_sharply_or_shrunk() {
    assert_eq!(fit_image(28, 28, 140), (140, 140));
    assert_eq!(fit_image(28, 28, 112), (112, 112));
    assert_eq!(fit_image(28, 14, 112), (56, 112));
    assert_eq!(fit_image(300, 150, 100), (50, 100));
    assert_eq!(source_pixel(139, 139, (140, 140), 28, 28), 28 * 28 - 1);
    assert_eq!(source_pixel(5, 4, (140, 140), 28, 28), 1);
}

#[test]
fn samples_show_each_image_in_the_binary_colour_map_with_its_name() {
    let images = gradient_images(30);
    let labels: Vec<u8> = (0..30).map(|i| (i % 10) as u8).collect();
    let img = samples(&images, &labels, crate::data::Shape::new(28, 28, 1), &names()).unwrap();
    assert_eq!(img.dimensions(), SAMPLES.size(25));
    assert_eq!(img.dimensions(), (860, 986));
    let (ix, iy, size) = SAMPLES_IMAGE;
    for i in [0, 12, 24] {
        let (cx, cy) = SAMPLES.cell(i);
        for (px, py) in [(0, 0), (70, 33), (139, 139)] {
            let want = images[i * 784 + source_pixel(px, py, (size, size), 28, 28)];
            let got = img.get_pixel(cx + ix + px, cy + iy + py);
            assert!(is(got, binary(want)), "cell {i} ({px},{py}): {got:?}, want {}", 255 - want);
        }
        // The name is drawn under the image.
        let name_box = (cx + 4, cy + iy + size + 6, SAMPLES.cell_w - 8, 24);
        assert!(inked(&img, name_box) > 30, "no class name under cell {i}");
    }
}

fn predictions_fixture() -> (Vec<u8>, Vec<u8>, Predictions) {
    let n = 16;
    let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
    // Image i is predicted as its label when i is even, else as label + 1.
    let classes: Vec<usize> =
        (0..n).map(|i| (labels[i] as usize + if i % 2 == 0 { 0 } else { 1 }) % 10).collect();
    let mut probabilities = vec![0.02f32; n * 10];
    for (i, &c) in classes.iter().enumerate() {
        probabilities[i * 10 + c] = 0.82;
    }
    let p = Predictions { num_classes: 10, classes, logits: probabilities.clone(), probabilities };
    (gradient_images(n), labels, p)
}

#[test]
fn predictions_colour_captions_and_bars_by_right_and_wrong() {
    let (images, labels, p) = predictions_fixture();
    let img =
        predictions(&images, &labels, crate::data::Shape::new(28, 28, 1), &p, &names(), "test")
            .unwrap();
    assert_eq!(img.dimensions(), PREDICTIONS.size(15));
    assert_eq!(img.dimensions(), (1260, 1032));
    let (bx, by, _, bh) = PREDICTIONS_BARS;
    for (i, &label) in labels.iter().enumerate().take(15) {
        let (cx, cy) = PREDICTIONS.cell(i);
        let right = i % 2 == 0;
        let caption = (cx + 4, cy + PREDICTIONS_CAPTION_Y - 16, PREDICTIONS.cell_w - 8, 22);
        let (blue, red) = (tinted(&img, caption, Tint::Blue), tinted(&img, caption, Tint::Red));
        if right {
            assert!(blue > 20 && red == 0, "cell {i}: right, caption blue {blue} red {red}");
        } else {
            assert!(red > 20 && blue == 0, "cell {i}: wrong, caption blue {blue} red {red}");
        }
        // Bar heights: the predicted class reaches 0.82 of the box, the others 0.02.
        let bottom = cy + by + bh - 1;
        let bar_top = |c: usize| {
            let (l, r) = bar_span(c, 10);
            let x = cx + bx + (l + r) / 2;
            (cy + by..=bottom)
                .find(|&y| {
                    !is(img.get_pixel(x, y), WHITE)
                        && !is(img.get_pixel(x, y), RGBColor(230, 230, 230))
                })
                .map(|y| bottom + 1 - y)
        };
        let guess = p.classes[i];
        let truth = label as usize;
        let h = bar_top(guess).unwrap();
        assert!((h as f64 - 0.82 * bh as f64).abs() <= 1.0, "cell {i}: bar height {h}");
        let (l, r) = bar_span(guess, 10);
        let px = img.get_pixel(cx + bx + (l + r) / 2, bottom - 2);
        assert!(is(px, if right { BLUE } else { RED }), "cell {i}: predicted bar {px:?}");
        let (l, r) = bar_span(truth, 10);
        assert!(is(img.get_pixel(cx + bx + (l + r) / 2, bottom), BLUE), "cell {i}: true bar");
        let other = (truth + 5) % 10;
        let (l, r) = bar_span(other, 10);
        assert!(is(img.get_pixel(cx + bx + (l + r) / 2, bottom), GREY), "cell {i}: other bar");
    }
}

#[test]
fn confusion_cells_are_coloured_by_row_share() {
    let k = 10;
    let mut m = vec![vec![0u64; k]; k];
    for (t, row) in m.iter_mut().enumerate() {
        row[t] = 8 + t as u64;
        row[(t + 1) % k] = 2;
    }
    let img = confusion(&m, &names(), "test", 0.8).unwrap();
    let l = confusion_layout(&names());
    assert!(l.names && l.counts, "{l:?}");
    assert_eq!(img.dimensions(), (l.width, l.height));
    for (t, row) in m.iter().enumerate() {
        let total = (8 + t + 2) as f64;
        for (p, &count) in row.iter().enumerate() {
            let (x, y) = (l.x + p as u32 * l.cell + 3, l.y + t as u32 * l.cell + 3);
            let want = blues(count as f64 / total);
            assert!(is(img.get_pixel(x, y), want), "cell ({t},{p}): {:?}", img.get_pixel(x, y));
        }
    }
    // The diagonal is dark, the empty cells light; labels are drawn left of and below the grid.
    assert!(blues(0.8).0 < 60 && blues(0.0).0 > 240);
    let grid = l.cell * k as u32;
    assert!(inked(&img, (10, l.y, l.x - 12, grid)) > 500, "row labels");
    assert!(inked(&img, (l.x, l.y + grid + 4, grid, 60)) > 500, "column labels");
}

#[test]
fn confusion_scales_to_many_and_few_classes() {
    for k in [2, 40, 256] {
        let names: Vec<String> = (0..k).map(|i| format!("class {i}")).collect();
        let m: Vec<Vec<u64>> = (0..k).map(|t| (0..k).map(|p| (t == p) as u64).collect()).collect();
        let img = confusion(&m, &names, "validation", 1.0).unwrap();
        let l = confusion_layout(&names);
        assert_eq!(img.dimensions(), (l.width, l.height));
        assert!(is(img.get_pixel(l.x + 1, l.y + 1), blues(1.0)), "k={k}");
    }
}

fn epoch(e: usize, loss: f64, acc: f64, val: Option<(f64, f64)>) -> EpochMetrics {
    EpochMetrics {
        epoch: e,
        learning_rate: 0.001,
        train_loss: loss,
        train_accuracy: acc,
        validation_loss: val.map(|v| v.0),
        validation_accuracy: val.map(|v| v.1),
        seconds: 1.0,
        samples_per_second: 1.0,
    }
}

fn metrics(epochs: Vec<EpochMetrics>) -> Metrics {
    Metrics { epochs, test: None, early_stop: None, data_load_seconds: 0.0, train_seconds: 0.0 }
}

/// Mean row of the pixels of colour `c` in columns `[x0, x1)`.
fn mean_y(img: &Picture, x0: u32, x1: u32, c: RGBColor) -> Option<f64> {
    let ys: Vec<u32> = (x0..x1)
        .flat_map(|x| (0..img.height()).filter(move |&y| is(img.get_pixel(x, y), c)))
        .collect();
    (!ys.is_empty()).then(|| ys.iter().sum::<u32>() as f64 / ys.len() as f64)
}

#[test]
fn training_curves_go_the_way_the_numbers_go() {
    let m = metrics(
        (1..=5)
            .map(|e| {
                let t = e as f64;
                epoch(e, 1.0 / t, 0.6 + 0.06 * t, Some((1.2 / t + 0.1, 0.55 + 0.05 * t)))
            })
            .collect(),
    );
    let img = training(&m).unwrap();
    assert_eq!(img.dimensions(), TRAINING_SIZE);
    let half = TRAINING_SIZE.0 / 2;
    // Loss falls: its blue pixels sit higher (smaller y) near epoch 1 than near epoch 5.
    let (early, late) =
        (mean_y(&img, 90, 200, BLUE).unwrap(), mean_y(&img, 400, 560, BLUE).unwrap());
    assert!(early < late, "loss: early {early} late {late}");
    // Accuracy rises.
    let (early, late) = (
        mean_y(&img, half + 90, half + 200, BLUE).unwrap(),
        mean_y(&img, half + 400, half + 480, BLUE).unwrap(),
    );
    assert!(early > late, "accuracy: early {early} late {late}");
    // Validation loss lies above training loss everywhere.
    assert!(mean_y(&img, 90, 560, ORANGE).unwrap() < mean_y(&img, 90, 560, BLUE).unwrap());

    let no_val = metrics((1..=3).map(|e| epoch(e, 0.5, 0.8, None)).collect());
    let img = training(&no_val).unwrap();
    assert_eq!(mean_y(&img, 0, TRAINING_SIZE.0, ORANGE), None, "no validation, no orange");
    assert!(mean_y(&img, 0, half, BLUE).is_some());
    // One epoch still draws its point.
    let one = metrics(vec![epoch(1, 0.5, 0.8, None)]);
    assert!(mean_y(&training(&one).unwrap(), 0, half, BLUE).is_some());
}

#[test]
fn png_round_trips() {
    let img =
        samples(&gradient_images(3), &[0, 1, 2], crate::data::Shape::new(28, 28, 1), &names())
            .unwrap();
    let back = Picture::from_png(&img.png().unwrap()).unwrap();
    assert_eq!(back, img);
    assert_eq!(back.get_pixel(SAMPLES_IMAGE.0, SAMPLES_IMAGE.1), [255; 3], "pixel 0 is white");
}

#[test]
fn rgb_images_are_drawn_in_their_colours() {
    // Three 20x30 RGB images: red, green, blue.
    let shape = crate::data::Shape::new(20, 30, 3);
    let images: Vec<u8> =
        [[200, 0, 0], [0, 200, 0], [0, 0, 200]].iter().flat_map(|px| px.repeat(20 * 30)).collect();
    let img = samples(&images, &[0, 1, 2], shape, &names()).unwrap();
    let (ix, iy, size) = SAMPLES_IMAGE;
    for (i, want) in [[200, 0, 0], [0, 200, 0], [0, 0, 200]].iter().enumerate() {
        let (x, y) = SAMPLES.cell(i);
        let centre = img.get_pixel(x + ix + size / 2, y + iy + size / 2);
        assert_eq!(&centre, want, "image {i}");
    }
}

/// Class names are cut in every picture: ten of 50,000 characters each draw in moments, at the
/// size short names give, and a cut name still shows its start.
#[test]
fn long_class_names_are_cut_and_cost_no_time() {
    let long: Vec<String> = (0..10).map(|i| format!("class {i} ") + &"W".repeat(50_000)).collect();
    let started = std::time::Instant::now();
    let (images, labels, p) = predictions_fixture();
    let m: Vec<Vec<u64>> = (0..10).map(|t| (0..10).map(|p| (t == p) as u64).collect()).collect();
    let confusion_img = confusion(&m, &long, "test", 1.0).unwrap();
    let l = confusion_layout(&long);
    assert_eq!(confusion_img.dimensions(), (l.width, l.height));
    assert!(l.width <= 1200 && l.height <= 1200, "{l:?}");
    let shown =
        predictions(&images, &labels, crate::data::Shape::new(28, 28, 1), &p, &long, "test")
            .unwrap();
    assert_eq!(shown.dimensions(), PREDICTIONS.size(15));
    let drawn = samples(&images, &labels, crate::data::Shape::new(28, 28, 1), &long).unwrap();
    assert_eq!(drawn.dimensions(), SAMPLES.size(16));
    let took = started.elapsed();
    assert!(took < std::time::Duration::from_secs(3), "took {took:?}");
    let cut = class_name(&long, 3);
    assert!(cut.starts_with("class 3 W") && cut.ends_with('…'), "{cut}");
    assert!(text_width(&cut, 16, false) <= NAME_WIDTH);
}
