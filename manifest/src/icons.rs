//! Every icon an installable app needs, rendered from one SVG or PNG.
//!
//! - `icon-192.png`, `icon-512.png`: purpose `any`, transparent background;
//! - `maskable-512.png`: the icon inside the safe zone (the centre 80%, the circle a
//!   platform mask may cut to) on the background colour, since a maskable icon must be
//!   opaque to its edges;
//! - `apple-touch-icon.png` (180): opaque, because iOS fills transparency with black;
//! - `favicon.ico`: 16, 32 and 48 px PNGs in an ICO container.
//!
//! SVG sources are rendered at each size (sharp at every size); PNG sources are scaled
//! with a Lanczos filter, and should be at least 512 px.

use std::path::Path;

use image::{Rgba, RgbaImage, imageops};

/// The safe zone of a maskable icon: its content must fit in this share of the side.
pub const SAFE_ZONE: f32 = 0.8;

/// An icon source, decoded once.
pub enum Source {
    Svg(Box<resvg::usvg::Tree>),
    Png(RgbaImage),
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Svg(t) => write!(f, "Svg({}x{})", t.size().width(), t.size().height()),
            Source::Png(i) => write!(f, "Png({}x{})", i.width(), i.height()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IconError {
    #[error("the SVG cannot be read: {0}")]
    Svg(String),
    #[error("the PNG cannot be read: {0}")]
    Png(String),
    #[error("the icon is {width}×{height}, not square")]
    NotSquare { width: u32, height: u32 },
    #[error("the icon is neither an SVG nor a PNG")]
    Format,
    #[error("cannot render at {0} px")]
    Size(u32),
    #[error("cannot encode a PNG: {0}")]
    Encode(String),
}

impl IconError {
    /// How to fix it, for the person holding the file.
    pub fn hint(&self) -> &'static str {
        match self {
            IconError::Svg(_) => "open the file in a browser to check it, or export it again as plain SVG",
            IconError::Png(_) => "export the icon again as PNG, at least 512×512",
            IconError::NotSquare { .. } => "crop or pad the icon to a square (an SVG's viewBox, or the PNG's canvas)",
            IconError::Format => "use an .svg (best) or a .png of at least 512×512",
            IconError::Size(_) | IconError::Encode(_) => "this is a bug in stead: please report it with the icon",
        }
    }
}

/// What `render` writes: file name (under `icons/`) and bytes.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub files: Vec<(String, Vec<u8>)>,
    /// Notes about the source that are not errors (a small PNG scaled up).
    pub warnings: Vec<String>,
}

impl Source {
    /// Decodes `bytes`, by the file name's extension.
    pub fn decode(path: &Path, bytes: &[u8]) -> Result<Source, IconError> {
        let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
        let source = match ext.as_deref() {
            Some("svg") => {
                let tree = resvg::usvg::Tree::from_data(bytes, &resvg::usvg::Options::default()).map_err(|e| IconError::Svg(e.to_string()))?;
                Source::Svg(Box::new(tree))
            }
            Some("png") => {
                let img = image::load_from_memory_with_format(bytes, image::ImageFormat::Png).map_err(|e| IconError::Png(e.to_string()))?;
                Source::Png(img.to_rgba8())
            }
            _ => return Err(IconError::Format),
        };
        let (w, h) = source.size();
        // A pixel of difference is rounding in an SVG's size, not a wrong shape.
        if w.abs_diff(h) > 1 {
            return Err(IconError::NotSquare { width: w, height: h });
        }
        Ok(source)
    }

    fn size(&self) -> (u32, u32) {
        match self {
            Source::Svg(t) => (t.size().width().round() as u32, t.size().height().round() as u32),
            Source::Png(i) => (i.width(), i.height()),
        }
    }

    /// The icon at `size`×`size`, transparent where the source is.
    pub fn at(&self, size: u32) -> Result<RgbaImage, IconError> {
        match self {
            Source::Svg(tree) => {
                let mut pixmap = resvg::tiny_skia::Pixmap::new(size, size).ok_or(IconError::Size(size))?;
                let s = tree.size();
                let scale = size as f32 / s.width().max(s.height());
                let (dx, dy) = ((size as f32 - s.width() * scale) / 2.0, (size as f32 - s.height() * scale) / 2.0);
                let transform = resvg::tiny_skia::Transform::from_scale(scale, scale).post_translate(dx, dy);
                resvg::render(tree, transform, &mut pixmap.as_mut());
                let mut img = RgbaImage::new(size, size);
                for (dst, src) in img.pixels_mut().zip(pixmap.pixels()) {
                    let c = src.demultiply();
                    *dst = Rgba([c.red(), c.green(), c.blue(), c.alpha()]);
                }
                Ok(img)
            }
            Source::Png(img) => Ok(imageops::resize(img, size, size, imageops::FilterType::Lanczos3)),
        }
    }

    /// The icon shrunk into the centre `share` of a `size` square filled with `background`.
    pub fn on_background(&self, size: u32, share: f32, background: [u8; 3]) -> Result<RgbaImage, IconError> {
        let inner = ((size as f32 * share).round() as u32).max(1);
        let icon = self.at(inner)?;
        let [r, g, b] = background;
        let mut canvas = RgbaImage::from_pixel(size, size, Rgba([r, g, b, 255]));
        let offset = i64::from((size - inner) / 2);
        imageops::overlay(&mut canvas, &icon, offset, offset);
        Ok(canvas)
    }
}

/// Renders every icon from `source`; `background` fills the opaque ones.
pub fn render(source: &Source, background: [u8; 3]) -> Result<Rendered, IconError> {
    let mut warnings = Vec::new();
    if let Source::Png(img) = source
        && img.width() < 512
    {
        warnings.push(format!(
            "the PNG icon is {}×{}: the 512 px icons are scaled up and will look soft (use an SVG or a PNG of 512×512 or more)",
            img.width(),
            img.height()
        ));
    }
    let mut files = vec![
        ("icon-192.png".to_owned(), png(&source.at(192)?)?),
        ("icon-512.png".to_owned(), png(&source.at(512)?)?),
        ("maskable-512.png".to_owned(), png(&source.on_background(512, SAFE_ZONE, background)?)?),
        ("apple-touch-icon.png".to_owned(), png(&source.on_background(180, 1.0, background)?)?),
    ];
    let favicons = [16, 32, 48].map(|s| source.at(s).and_then(|i| png(&i).map(|bytes| (s, bytes))));
    let favicons: Vec<(u32, Vec<u8>)> = favicons.into_iter().collect::<Result<_, _>>()?;
    files.push(("favicon.ico".to_owned(), ico(&favicons)));
    Ok(Rendered { files, warnings })
}

/// `#rgb`, `#rrggbb` or `#rrggbbaa` as RGB; `None` for anything else.
pub fn parse_colour(s: &str) -> Option<[u8; 3]> {
    let hex = s.strip_prefix('#')?;
    let digit = |i: usize| u8::from_str_radix(hex.get(i..i + 1)?, 16).ok();
    let pair = |i: usize| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok();
    match hex.len() {
        3 => Some([digit(0)? * 17, digit(1)? * 17, digit(2)? * 17]),
        6 | 8 => Some([pair(0)?, pair(2)?, pair(4)?]),
        _ => None,
    }
}

fn png(img: &RgbaImage) -> Result<Vec<u8>, IconError> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).map_err(|e| IconError::Encode(e.to_string()))?;
    Ok(out.into_inner())
}

/// An ICO file holding PNG images (allowed since Windows Vista, read by every browser).
pub fn ico(images: &[(u32, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend([0, 0, 1, 0]);
    out.extend((images.len() as u16).to_le_bytes());
    let mut offset = 6 + 16 * images.len() as u32;
    for (size, bytes) in images {
        // 256 px is written as 0; larger sizes do not fit an ICO entry.
        let side = if *size >= 256 { 0 } else { *size as u8 };
        out.extend([side, side, 0, 0]);
        out.extend(1u16.to_le_bytes()); // colour planes
        out.extend(32u16.to_le_bytes()); // bits per pixel
        out.extend((bytes.len() as u32).to_le_bytes());
        out.extend(offset.to_le_bytes());
        offset += bytes.len() as u32;
    }
    for (_, bytes) in images {
        out.extend(bytes);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SVG: &str = r##"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 100 100" width="100" height="100">
        <rect width="100" height="100" fill="#ff0000"/></svg>"##;

    fn decode_png(bytes: &[u8]) -> RgbaImage {
        image::load_from_memory_with_format(bytes, image::ImageFormat::Png).unwrap().to_rgba8()
    }

    fn file<'a>(r: &'a Rendered, name: &str) -> &'a [u8] {
        &r.files.iter().find(|(n, _)| n == name).unwrap().1
    }

    #[test]
    fn an_svg_renders_every_icon_at_its_size() {
        let source = Source::decode(Path::new("icon.svg"), SVG.as_bytes()).unwrap();
        let r = render(&source, [0, 0, 255]).unwrap();
        let names: Vec<_> = r.files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["icon-192.png", "icon-512.png", "maskable-512.png", "apple-touch-icon.png", "favicon.ico"]);
        for (name, size) in [("icon-192.png", 192), ("icon-512.png", 512), ("maskable-512.png", 512), ("apple-touch-icon.png", 180)] {
            let img = decode_png(file(&r, name));
            assert_eq!(img.dimensions(), (size, size), "{name}");
        }
        assert_eq!(decode_png(file(&r, "icon-512.png")).get_pixel(0, 0), &Rgba([255, 0, 0, 255]));
        assert!(r.warnings.is_empty());
    }

    #[test]
    fn the_maskable_icon_keeps_its_content_in_the_safe_zone() {
        let source = Source::decode(Path::new("icon.svg"), SVG.as_bytes()).unwrap();
        let r = render(&source, [0, 0, 255]).unwrap();
        let img = decode_png(file(&r, "maskable-512.png"));
        // The edge band is background, opaque; the centre is the icon.
        assert_eq!(img.get_pixel(0, 0), &Rgba([0, 0, 255, 255]));
        assert_eq!(img.get_pixel(50, 256), &Rgba([0, 0, 255, 255]));
        assert_eq!(img.get_pixel(256, 256), &Rgba([255, 0, 0, 255]));
        assert_eq!(img.get_pixel(256 - 200, 256), &Rgba([255, 0, 0, 255]), "the icon fills 80% of the side");
        assert!(img.pixels().all(|p| p[3] == 255), "opaque to the edges");
    }

    #[test]
    fn the_favicon_is_an_ico_of_three_pngs() {
        let source = Source::decode(Path::new("icon.svg"), SVG.as_bytes()).unwrap();
        let r = render(&source, [255, 255, 255]).unwrap();
        let ico = file(&r, "favicon.ico");
        assert_eq!(&ico[..6], &[0, 0, 1, 0, 3, 0]);
        assert_eq!([ico[6], ico[22], ico[38]], [16, 32, 48]);
        let offset = u32::from_le_bytes(ico[18..22].try_into().unwrap()) as usize;
        let len = u32::from_le_bytes(ico[14..18].try_into().unwrap()) as usize;
        assert_eq!(decode_png(&ico[offset..offset + len]).dimensions(), (16, 16));
    }

    #[test]
    fn a_png_source_is_scaled_and_a_small_one_warned_about() {
        let mut bytes = Vec::new();
        RgbaImage::from_pixel(64, 64, Rgba([0, 255, 0, 255])).write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png).unwrap();
        let source = Source::decode(Path::new("icon.PNG"), &bytes).unwrap();
        let r = render(&source, [0, 0, 0]).unwrap();
        assert_eq!(decode_png(file(&r, "icon-512.png")).get_pixel(256, 256), &Rgba([0, 255, 0, 255]));
        assert_eq!(r.warnings.len(), 1);
        assert!(r.warnings[0].contains("64×64"), "{:?}", r.warnings);
    }

    #[test]
    fn bad_sources_are_refused_with_a_hint() {
        let wide = SVG.replace("viewBox=\"0 0 100 100\" width=\"100\"", "viewBox=\"0 0 200 100\" width=\"200\"");
        let e = Source::decode(Path::new("i.svg"), wide.as_bytes()).unwrap_err();
        assert!(matches!(e, IconError::NotSquare { width: 200, height: 100 }), "{e:?}");
        assert!(matches!(Source::decode(Path::new("i.svg"), b"<svg"), Err(IconError::Svg(_))));
        assert!(matches!(Source::decode(Path::new("i.png"), b"nope"), Err(IconError::Png(_))));
        let e = Source::decode(Path::new("i.gif"), b"GIF89a").unwrap_err();
        assert!(matches!(e, IconError::Format));
        assert!(!e.hint().is_empty());
    }

    #[test]
    fn colours() {
        assert_eq!(parse_colour("#2f6f4f"), Some([0x2f, 0x6f, 0x4f]));
        assert_eq!(parse_colour("#fff"), Some([255, 255, 255]));
        assert_eq!(parse_colour("#11223344"), Some([0x11, 0x22, 0x33]));
        assert_eq!(parse_colour("white"), None);
        assert_eq!(parse_colour("#12345"), None);
    }
}
