//! Image tagging: format, resolution, orientation, dominant colour names, EXIF camera and date.

use std::collections::HashMap;
use std::io::Cursor;

use exif::{In, Reader as ExifReader, Tag as ExifTag, Value};
use image::{ImageReader, Limits};

use crate::{Error, Result, Tag};

/// Colours covering less than this share of the pixels are not reported.
const MIN_COLOUR_SHARE: f32 = 0.05;
/// Images are downsampled to at most this many pixels per side before counting colours.
const SAMPLE_SIDE: u32 = 64;
/// Decoder memory limit, against decompression bombs.
const MAX_DECODE_BYTES: u64 = 512 * 1024 * 1024;

/// Names the colour of one pixel by hue, saturation and value.
pub fn colour_name([r, g, b]: [u8; 3]) -> &'static str {
    let (r, g, b) = (
        f32::from(r) / 255.0,
        f32::from(g) / 255.0,
        f32::from(b) / 255.0,
    );
    let max = r.max(g).max(b);
    let min = r.min(g).min(b);
    let delta = max - min;
    let saturation = if max > 0.0 { delta / max } else { 0.0 };
    if max < 0.2 {
        return "black";
    }
    if saturation < 0.15 {
        return if max > 0.85 { "white" } else { "gray" };
    }
    let hue = if max == r {
        60.0 * ((g - b) / delta).rem_euclid(6.0)
    } else if max == g {
        60.0 * ((b - r) / delta + 2.0)
    } else {
        60.0 * ((r - g) / delta + 4.0)
    };
    match hue {
        h if !(15.0..345.0).contains(&h) => "red",
        h if h < 45.0 => {
            if max < 0.6 {
                "brown"
            } else {
                "orange"
            }
        }
        h if h < 70.0 => "yellow",
        h if h < 165.0 => "green",
        h if h < 200.0 => "cyan",
        h if h < 260.0 => "blue",
        h if h < 290.0 => "purple",
        _ => "pink",
    }
}

/// The EXIF facts of an image: camera, date (`YYYY-MM-DD`) and whether the stored picture is
/// rotated by 90° for display.
#[derive(Debug, Default, PartialEq, Eq)]
struct ExifFacts {
    camera: Option<String>,
    date: Option<String>,
    rotated: bool,
}

fn ascii_field(exif: &exif::Exif, tag: ExifTag) -> Option<String> {
    let field = exif.get_field(tag, In::PRIMARY)?;
    match &field.value {
        Value::Ascii(values) => values
            .first()
            .map(|v| String::from_utf8_lossy(v).trim().to_owned())
            .filter(|v| !v.is_empty()),
        _ => None,
    }
}

fn exif_facts(bytes: &[u8]) -> ExifFacts {
    let Ok(exif) = ExifReader::new().read_from_container(&mut Cursor::new(bytes)) else {
        return ExifFacts::default();
    };
    let make = ascii_field(&exif, ExifTag::Make);
    let model = ascii_field(&exif, ExifTag::Model);
    let camera = match (make, model) {
        (Some(make), Some(model)) if model.starts_with(&make) => Some(model),
        (Some(make), Some(model)) => Some(format!("{make} {model}")),
        (make, model) => make.or(model),
    };
    let date = ascii_field(&exif, ExifTag::DateTimeOriginal)
        .or_else(|| ascii_field(&exif, ExifTag::DateTime))
        .and_then(|d| {
            // EXIF dates look like "2024:05:01 12:30:00".
            let day = d.get(..10)?.replace(':', "-");
            day.chars()
                .all(|c| c.is_ascii_digit() || c == '-')
                .then_some(day)
        });
    let rotated = exif
        .get_field(ExifTag::Orientation, In::PRIMARY)
        .and_then(|f| f.value.get_uint(0))
        .is_some_and(|o| (5..=8).contains(&o));
    ExifFacts {
        camera,
        date,
        rotated,
    }
}

/// Tags an image: `format:`, `resolution:WxH`, `orientation:`, up to `top_n` `colour:` tags
/// scored by their share of the pixels, and `camera:`/`date:`/`year:` from EXIF when present.
pub fn tag(bytes: &[u8], top_n: usize) -> Result<Vec<Tag>> {
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| Error::Tagging(format!("reading the image: {e}")))?;
    let format = reader.format().map(|f| {
        f.extensions_str()
            .first()
            .copied()
            .unwrap_or("unknown")
            .to_owned()
    });
    let mut limits = Limits::default();
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    reader.limits(limits);
    let picture = reader
        .decode()
        .map_err(|e| Error::Tagging(format!("decoding the image: {e}")))?;
    let facts = exif_facts(bytes);
    let (mut width, mut height) = (picture.width(), picture.height());
    if facts.rotated {
        std::mem::swap(&mut width, &mut height);
    }
    let fact = |text: String| Tag::new(text, 1.0);
    let mut tags: Vec<Tag> = format
        .map(|f| fact(format!("format:{f}")))
        .into_iter()
        .collect();
    tags.push(fact(format!("resolution:{width}x{height}")));
    let orientation = match width.cmp(&height) {
        std::cmp::Ordering::Greater => "landscape",
        std::cmp::Ordering::Less => "portrait",
        std::cmp::Ordering::Equal => "square",
    };
    tags.push(fact(format!("orientation:{orientation}")));

    let sample = picture.thumbnail(SAMPLE_SIDE, SAMPLE_SIDE).to_rgb8();
    let total = (sample.width() * sample.height()).max(1) as f32;
    let mut counts: HashMap<&'static str, u32> = HashMap::new();
    for pixel in sample.pixels() {
        *counts.entry(colour_name(pixel.0)).or_default() += 1;
    }
    let mut colours: Vec<(&str, u32)> = counts.into_iter().collect();
    colours.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    tags.extend(
        colours
            .into_iter()
            .map(|(name, count)| (name, count as f32 / total))
            .filter(|(_, share)| *share >= MIN_COLOUR_SHARE)
            .take(top_n)
            .map(|(name, share)| Tag::new(format!("colour:{name}"), share)),
    );
    if let Some(camera) = facts.camera {
        tags.push(fact(format!("camera:{camera}")));
    }
    if let Some(date) = facts.date {
        tags.push(fact(format!("year:{}", &date[..4])));
        tags.push(fact(format!("date:{date}")));
    }
    Ok(tags)
}

#[cfg(test)]
mod tests {
    use exif::Field;
    use exif::experimental::Writer;
    use image::codecs::jpeg::JpegEncoder;
    use image::{ImageFormat, Rgb, RgbImage};

    use super::*;
    use crate::FileKind;
    use crate::tagger::{TaggerConfig, detect_kind, tag_file};

    /// 40×20 pixels: the left three quarters red, the right quarter blue.
    fn red_blue() -> RgbImage {
        RgbImage::from_fn(40, 20, |x, _| {
            if x < 30 {
                Rgb([220, 20, 30])
            } else {
                Rgb([20, 40, 200])
            }
        })
    }

    /// A JPEG carrying an EXIF APP1 segment with camera, date and the given orientation.
    fn jpeg_with_exif(picture: &RgbImage, orientation: u16) -> Vec<u8> {
        let mut jpeg = Vec::new();
        JpegEncoder::new_with_quality(&mut jpeg, 95)
            .encode_image(picture)
            .unwrap();
        let fields = [
            Field {
                tag: ExifTag::Make,
                ifd_num: In::PRIMARY,
                value: Value::Ascii(vec![b"Canon".to_vec()]),
            },
            Field {
                tag: ExifTag::Model,
                ifd_num: In::PRIMARY,
                value: Value::Ascii(vec![b"Canon EOS 5D".to_vec()]),
            },
            Field {
                tag: ExifTag::Orientation,
                ifd_num: In::PRIMARY,
                value: Value::Short(vec![orientation]),
            },
            Field {
                tag: ExifTag::DateTimeOriginal,
                ifd_num: In::PRIMARY,
                value: Value::Ascii(vec![b"2021:07:14 09:30:00".to_vec()]),
            },
        ];
        let mut writer = Writer::new();
        for field in &fields {
            writer.push_field(field);
        }
        let mut tiff = Cursor::new(Vec::new());
        writer.write(&mut tiff, false).unwrap();
        let tiff = tiff.into_inner();
        let mut app1 = b"Exif\0\0".to_vec();
        app1.extend_from_slice(&tiff);
        let len = u16::try_from(app1.len() + 2).unwrap();
        let mut out = jpeg[..2].to_vec();
        out.extend_from_slice(&[0xff, 0xe1]);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&app1);
        out.extend_from_slice(&jpeg[2..]);
        out
    }

    fn names(tags: &[Tag]) -> Vec<&str> {
        tags.iter().map(|t| t.tag.as_str()).collect()
    }

    #[test]
    fn names_basic_colours() {
        let cases = [
            ([0, 0, 0], "black"),
            ([255, 255, 255], "white"),
            ([128, 128, 128], "gray"),
            ([250, 10, 10], "red"),
            ([250, 140, 10], "orange"),
            ([120, 70, 20], "brown"),
            ([240, 230, 20], "yellow"),
            ([20, 200, 40], "green"),
            ([20, 200, 210], "cyan"),
            ([20, 40, 220], "blue"),
            ([130, 30, 200], "purple"),
            ([240, 60, 160], "pink"),
        ];
        for (rgb, name) in cases {
            assert_eq!(colour_name(rgb), name, "{rgb:?}");
        }
    }

    #[test]
    fn tags_a_generated_png() {
        let mut png = Cursor::new(Vec::new());
        red_blue().write_to(&mut png, ImageFormat::Png).unwrap();
        let png = png.into_inner();
        assert_eq!(detect_kind(&png), FileKind::Image);
        let tags = tag_file(
            &mut Cursor::new(&png),
            FileKind::Image,
            &TaggerConfig::default(),
        )
        .unwrap();
        assert_eq!(
            names(&tags),
            vec![
                "format:png",
                "resolution:40x20",
                "orientation:landscape",
                "colour:red",
                "colour:blue"
            ]
        );
        assert!((tags[3].score - 0.75).abs() < 0.05, "{tags:?}");
        assert!((tags[4].score - 0.25).abs() < 0.05, "{tags:?}");
        let only_top = tag(&png, 1).unwrap();
        assert_eq!(names(&only_top).last(), Some(&"colour:red"));
    }

    #[test]
    fn tags_a_generated_jpeg_with_exif() {
        let jpeg = jpeg_with_exif(&red_blue(), 6);
        let tags = tag(&jpeg, 5).unwrap();
        assert_eq!(
            names(&tags),
            vec![
                "format:jpg",
                "resolution:20x40",
                "orientation:portrait",
                "colour:red",
                "colour:blue",
                "camera:Canon EOS 5D",
                "year:2021",
                "date:2021-07-14",
            ]
        );
        let upright = tag(&jpeg_with_exif(&red_blue(), 1), 5).unwrap();
        assert!(names(&upright).contains(&"orientation:landscape"));
    }

    #[test]
    fn corrupt_image_is_an_error() {
        let err = tag(b"\x89PNG\r\n\x1a\nnot really", 3).unwrap_err();
        assert!(matches!(err, Error::Tagging(_)), "{err}");
    }
}
