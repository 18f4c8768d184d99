//! Pictures stored as the submission asked (`output_format`: JPEG or lossless
//! WebP instead of ComfyUI's PNG), keeping the prompt metadata the way ComfyUI
//! writes it in its own WebP files: EXIF tag 0x0110 (Model) `prompt:<json>`, and
//! each other text of the PNG (`workflow`, …) as `<key>:<text>` in 0x010F, 0x010E,
//! … — so ComfyUI and the tools that read its files find them.

use serde_json::{Map, Value};

/// The largest PNG converted (a larger one is stored as it came).
pub const MAX_CONVERT_BYTES: u64 = crate::picture::MAX_BYTES;

/// What to store pictures as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Convert {
    Jpeg { quality: u8 },
    Webp,
}

impl Convert {
    /// From a job's parameters (`output_format`, `quality`); `None` for PNG.
    pub fn of(params: &Map<String, Value>) -> Option<Convert> {
        match params.get("output_format").and_then(Value::as_str)? {
            "jpeg" => Some(Convert::Jpeg {
                quality: params
                    .get("quality")
                    .and_then(Value::as_u64)
                    .map_or(90, |q| q.clamp(1, 100) as u8),
            }),
            "webp" => Some(Convert::Webp),
            _ => None,
        }
    }

    /// The extension of the stored file.
    pub fn extension(self) -> &'static str {
        match self {
            Convert::Jpeg { .. } => "jpg",
            Convert::Webp => "webp",
        }
    }

    /// `name` with the extension of this format (`a.png` → `a.jpg`).
    pub fn rename(self, name: &str) -> String {
        let stem = name.rsplit_once('.').map_or(name, |(s, _)| s);
        crate::storage::fit_name(&format!("{stem}.{}", self.extension()), "")
    }

    /// A PNG, re-encoded, its texts as EXIF.
    pub fn apply(self, png: &[u8]) -> Result<Vec<u8>, String> {
        let picture = crate::picture::decode(png, Some(image::ImageFormat::Png), 8)
            .map_err(|e| e.to_string())?;
        let exif = exif_of(&png_texts(png));
        let mut out = Vec::new();
        match self {
            Convert::Jpeg { quality } => {
                let rgb = picture.to_rgb8();
                let enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality);
                encode(
                    enc,
                    exif,
                    &rgb,
                    rgb.dimensions(),
                    image::ExtendedColorType::Rgb8,
                )?;
            }
            Convert::Webp => {
                let rgba = picture.to_rgba8();
                let enc = image::codecs::webp::WebPEncoder::new_lossless(&mut out);
                encode(
                    enc,
                    exif,
                    &rgba,
                    rgba.dimensions(),
                    image::ExtendedColorType::Rgba8,
                )?;
            }
        }
        Ok(out)
    }
}

/// Writes `pixels` with `enc`, the EXIF block first when there is one.
fn encode(
    mut enc: impl image::ImageEncoder,
    exif: Option<Vec<u8>>,
    pixels: &[u8],
    (w, h): (u32, u32),
    color: image::ExtendedColorType,
) -> Result<(), String> {
    if let Some(exif) = exif {
        enc.set_exif_metadata(exif).map_err(|e| e.to_string())?;
    }
    enc.write_image(pixels, w, h, color)
        .map_err(|e| e.to_string())
}

/// The `tEXt` chunks of a PNG (keyword, text), in order; what ComfyUI's SaveImage
/// writes (`prompt`, and each `extra_pnginfo` key such as `workflow`).
pub fn png_texts(png: &[u8]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut at = 8;
    while at + 12 <= png.len() {
        let len = u32::from_be_bytes([png[at], png[at + 1], png[at + 2], png[at + 3]]) as usize;
        let kind = &png[at + 4..at + 8];
        let Some(data) = png.get(at + 8..(at + 8).saturating_add(len)) else {
            break;
        };
        if kind == b"tEXt"
            && let Some(nul) = data.iter().position(|b| *b == 0)
        {
            // Latin-1, as the PNG standard says: each byte is its code point.
            let latin1 = |b: &[u8]| b.iter().map(|c| *c as char).collect::<String>();
            out.push((latin1(&data[..nul]), latin1(&data[nul + 1..])));
        }
        if kind == b"IEND" {
            break;
        }
        at += 12 + len;
    }
    out
}

/// A little-endian TIFF/EXIF block with one ASCII entry per text, as ComfyUI
/// writes them: `prompt` in 0x0110, the others from 0x010F down. `None` when
/// there is nothing to keep.
pub fn exif_of(texts: &[(String, String)]) -> Option<Vec<u8>> {
    let mut entries: Vec<(u16, Vec<u8>)> = Vec::new();
    let mut next: u16 = 0x010F;
    for (key, text) in texts {
        let tag = if key == "prompt" {
            0x0110
        } else {
            let t = next;
            next = next.checked_sub(1).filter(|t| *t >= 0x0100)?;
            t
        };
        let mut value = format!("{key}:{text}").into_bytes();
        value.push(0);
        entries.push((tag, value));
    }
    if entries.is_empty() {
        return None;
    }
    entries.sort_by_key(|(t, _)| *t);
    let n = entries.len();
    let mut out = Vec::new();
    out.extend_from_slice(b"II*\0");
    out.extend_from_slice(&8u32.to_le_bytes());
    out.extend_from_slice(&(n as u16).to_le_bytes());
    let mut data_at = 8 + 2 + 12 * n + 4;
    let mut data = Vec::new();
    for (tag, value) in &entries {
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&2u16.to_le_bytes()); // ASCII
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
        if value.len() <= 4 {
            let mut inline = value.clone();
            inline.resize(4, 0);
            out.extend_from_slice(&inline);
        } else {
            out.extend_from_slice(&(data_at as u32).to_le_bytes());
            data.extend_from_slice(value);
            data_at += value.len();
        }
    }
    out.extend_from_slice(&0u32.to_le_bytes()); // no next IFD
    out.extend_from_slice(&data);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png_with_text(w: u32, h: u32, texts: &[(&str, &str)]) -> Vec<u8> {
        let img = image::RgbaImage::from_fn(w, h, |x, y| {
            image::Rgba([(x * 7 % 256) as u8, (y * 5 % 256) as u8, 200, 255])
        });
        let mut png = Vec::new();
        image::DynamicImage::ImageRgba8(img)
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        // tEXt chunks just before IEND, as SaveImage writes them.
        let iend = png.len() - 12;
        let mut out = png[..iend].to_vec();
        for (k, t) in texts {
            let data = [k.as_bytes(), &[0], t.as_bytes()].concat();
            let mut chunk = (data.len() as u32).to_be_bytes().to_vec();
            chunk.extend_from_slice(b"tEXt");
            chunk.extend_from_slice(&data);
            let crc = crc32(&chunk[4..]);
            chunk.extend_from_slice(&crc.to_be_bytes());
            out.extend_from_slice(&chunk);
        }
        out.extend_from_slice(&png[iend..]);
        out
    }

    fn crc32(b: &[u8]) -> u32 {
        let mut c = 0xffff_ffffu32;
        for byte in b {
            c ^= *byte as u32;
            for _ in 0..8 {
                c = if c & 1 == 1 {
                    0xedb8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
        }
        !c
    }

    #[test]
    fn webp_is_lossless_and_keeps_the_prompt() {
        let png = png_with_text(
            48,
            32,
            &[("prompt", "{\"3\": {}}"), ("workflow", "{\"nodes\": []}")],
        );
        assert_eq!(png_texts(&png).len(), 2);
        let webp = Convert::Webp.apply(&png).unwrap();
        assert_eq!(&webp[8..12], b"WEBP");
        let a = image::load_from_memory(&png).unwrap().to_rgba8();
        let b = image::load_from_memory(&webp).unwrap().to_rgba8();
        assert_eq!(a, b, "the same pixels");
        let has = |needle: &[u8]| webp.windows(needle.len()).any(|w| w == needle);
        assert!(has(b"EXIF"), "an EXIF chunk");
        assert!(has(b"prompt:{\"3\": {}}") && has(b"workflow:{\"nodes\": []}"));
    }

    #[test]
    fn jpeg_takes_the_quality_and_keeps_the_prompt() {
        let png = png_with_text(64, 64, &[("prompt", "{\"1\": 2}")]);
        let q90 = Convert::Jpeg { quality: 90 }.apply(&png).unwrap();
        let q20 = Convert::Jpeg { quality: 20 }.apply(&png).unwrap();
        assert_eq!(&q90[..3], &[0xff, 0xd8, 0xff]);
        assert!(q20.len() < q90.len(), "{} vs {}", q20.len(), q90.len());
        let d = image::load_from_memory(&q90).unwrap();
        assert_eq!((d.width(), d.height()), (64, 64));
        assert!(
            q90.windows(8).any(|w| w == b"Exif\0\0II"),
            "an APP1 Exif segment"
        );
        assert!(q90.windows(15).any(|w| w == b"prompt:{\"1\": 2}"));
    }

    #[test]
    fn formats_come_from_the_parameters() {
        let p = |v: Value| v.as_object().unwrap().clone();
        assert_eq!(Convert::of(&p(serde_json::json!({}))), None);
        assert_eq!(
            Convert::of(&p(serde_json::json!({"output_format": "png"}))),
            None
        );
        assert_eq!(
            Convert::of(&p(serde_json::json!({"output_format": "jpeg"}))),
            Some(Convert::Jpeg { quality: 90 })
        );
        assert_eq!(
            Convert::of(&p(
                serde_json::json!({"output_format": "jpeg", "quality": 55})
            )),
            Some(Convert::Jpeg { quality: 55 })
        );
        assert_eq!(
            Convert::Webp.rename("studio_x_00001_.png"),
            "studio_x_00001_.webp"
        );
    }

    #[test]
    fn broken_pictures_are_refused_not_panicked_on() {
        assert!(
            Convert::Webp
                .apply(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR")
                .is_err()
        );
        assert!(png_texts(b"\x89PNG\r\n\x1a\n\xff\xff\xff\xfftEXtabc").is_empty());
        assert_eq!(exif_of(&[]), None);
    }
}
