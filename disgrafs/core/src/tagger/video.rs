//! Video tagging from the container's headers (no decoding): container, duration, resolution
//! and orientation of the first video track, and the codec of every track. ISO BMFF (MP4,
//! MOV, M4V, 3GP) is read with Mozilla's `mp4parse` (fuzzed for Firefox; it knows H.264,
//! AV1, VP8/9, MPEG-4, AAC, MP3, Opus, FLAC, ALAC and PCM, not HEVC), Matroska and WebM with
//! `matroska-demuxer`, which names any codec. Other containers (AVI, FLV…) get no tags beyond
//! their format.

use std::io::{Read, Seek, SeekFrom};
use std::time::Duration;

use crate::tagger::audio::duration_label;
use crate::{Error, Result, Tag};

/// What the container says about the file.
#[derive(Debug, Default, PartialEq)]
struct VideoInfo {
    container: &'static str,
    duration: Option<Duration>,
    /// Width and height of the first video track.
    resolution: Option<(u64, u64)>,
    /// Codec names of the tracks, in track order, without repeats.
    codecs: Vec<String>,
}

/// Tags a video file read from `reader`.
pub fn tag<R: Read + Seek>(reader: &mut R) -> Result<Vec<Tag>> {
    let mut magic = [0u8; 12];
    let has_magic = reader.read_exact(&mut magic).is_ok();
    reader
        .seek(SeekFrom::Start(0))
        .map_err(|e| Error::Tagging(format!("rewinding: {e}")))?;
    let info = match magic {
        _ if !has_magic => return Ok(Vec::new()),
        [0x1a, 0x45, 0xdf, 0xa3, ..] => matroska(reader)?,
        [_, _, _, _, b'f', b't', b'y', b'p', ..] => iso_bmff(reader, &magic[8..12])?,
        _ => return Ok(Vec::new()),
    };
    Ok(tags_of(&info))
}

fn tags_of(info: &VideoInfo) -> Vec<Tag> {
    let fact = |facet: &str, value: &str| Tag::new(format!("{facet}:{value}"), 1.0);
    let mut tags = vec![fact("container", info.container)];
    if let Some(duration) = info.duration {
        tags.push(fact("duration", &duration_label(duration)));
    }
    if let Some((width, height)) = info.resolution {
        tags.push(fact("resolution", &format!("{width}x{height}")));
        let orientation = match width.cmp(&height) {
            std::cmp::Ordering::Greater => "landscape",
            std::cmp::Ordering::Less => "portrait",
            std::cmp::Ordering::Equal => "square",
        };
        tags.push(fact("orientation", orientation));
    }
    tags.extend(info.codecs.iter().map(|codec| fact("codec", codec)));
    tags
}

/// A readable codec name for a Matroska codec ID.
fn codec_name(id: &str) -> String {
    let known = match id {
        "V_MPEG4/ISO/AVC" => "h264",
        "V_MPEGH/ISO/HEVC" => "hevc",
        "V_VP8" => "vp8",
        "V_VP9" => "vp9",
        "V_AV1" => "av1",
        "V_MPEG4/ISO/ASP" | "V_MPEG4/ISO/SP" => "mpeg4",
        "A_AAC" => "aac",
        "A_OPUS" => "opus",
        "A_VORBIS" => "vorbis",
        "A_FLAC" => "flac",
        "A_AC3" => "ac3",
        "A_MPEG/L3" => "mp3",
        "S_TEXT/UTF8" => "text",
        _ => "",
    };
    if known.is_empty() {
        // Other Matroska IDs look like "A_AAC/MPEG4/LC" or "V_MPEG2".
        let base = id.split('/').next().unwrap_or(id);
        let base = base
            .strip_prefix("V_")
            .or_else(|| base.strip_prefix("A_"))
            .or_else(|| base.strip_prefix("S_"))
            .unwrap_or(base);
        base.trim().to_lowercase()
    } else {
        known.to_owned()
    }
}

fn push_codec(codecs: &mut Vec<String>, id: &str) {
    let name = codec_name(id);
    if !name.is_empty() && !codecs.contains(&name) {
        codecs.push(name);
    }
}

fn iso_bmff<R: Read>(reader: &mut R, major_brand: &[u8]) -> Result<VideoInfo> {
    let context = mp4parse::read_mp4(reader)
        .map_err(|e| Error::Tagging(format!("reading the MP4 boxes: {e:?}")))?;
    let container = match major_brand {
        b"qt  " => "mov",
        b"3gp4" | b"3gp5" | b"3gp6" | b"3g2a" => "3gp",
        _ => "mp4",
    };
    let mut info = VideoInfo {
        container,
        ..VideoInfo::default()
    };
    for track in context.tracks.iter() {
        if let (Some(duration), Some(scale)) = (&track.duration, &track.timescale)
            && scale.0 > 0
        {
            let secs = Duration::from_secs_f64(duration.0 as f64 / scale.0 as f64);
            info.duration = Some(info.duration.map_or(secs, |d| d.max(secs)));
        }
        let entry = track
            .stsd
            .as_ref()
            .and_then(|stsd| stsd.descriptions.first());
        let codec = match entry {
            Some(mp4parse::SampleEntry::Video(video)) => {
                // The track header's display size (16.16 fixed point), else the coded size.
                let display = track
                    .tkhd
                    .as_ref()
                    .map(|tkhd| (u64::from(tkhd.width >> 16), u64::from(tkhd.height >> 16)))
                    .filter(|&(w, h)| w > 0 && h > 0);
                let coded = (u64::from(video.width), u64::from(video.height));
                if info.resolution.is_none() {
                    info.resolution = display.or(Some(coded).filter(|&(w, h)| w > 0 && h > 0));
                }
                video.codec_type
            }
            Some(mp4parse::SampleEntry::Audio(audio)) => audio.codec_type,
            _ => mp4parse::CodecType::Unknown,
        };
        let name = match codec {
            mp4parse::CodecType::H264 => "h264",
            mp4parse::CodecType::AV1 => "av1",
            mp4parse::CodecType::VP9 => "vp9",
            mp4parse::CodecType::VP8 => "vp8",
            mp4parse::CodecType::MP4V => "mpeg4",
            mp4parse::CodecType::H263 => "h263",
            mp4parse::CodecType::AAC => "aac",
            mp4parse::CodecType::MP3 => "mp3",
            mp4parse::CodecType::Opus => "opus",
            mp4parse::CodecType::FLAC => "flac",
            mp4parse::CodecType::ALAC => "alac",
            mp4parse::CodecType::LPCM => "pcm",
            _ => "",
        };
        if !name.is_empty() && !info.codecs.iter().any(|c| c == name) {
            info.codecs.push(name.to_owned());
        }
    }
    info.duration = info.duration.filter(|d| !d.is_zero());
    Ok(info)
}

fn matroska<R: Read + Seek>(reader: &mut R) -> Result<VideoInfo> {
    let mkv = matroska_demuxer::MatroskaFile::open(reader)
        .map_err(|e| Error::Tagging(format!("reading the Matroska elements: {e}")))?;
    let container = match mkv.ebml_header().doc_type() {
        "webm" => "webm",
        _ => "matroska",
    };
    let info = mkv.info();
    // Duration is in units of the timestamp scale (nanoseconds per unit).
    let duration = info
        .duration()
        .map(|units| units * info.timestamp_scale().get() as f64 / 1e9)
        .filter(|secs| secs.is_finite() && *secs > 0.0)
        .map(Duration::from_secs_f64);
    let mut video = VideoInfo {
        container,
        duration,
        ..VideoInfo::default()
    };
    for track in mkv.tracks() {
        if let Some(v) = track.video()
            && video.resolution.is_none()
        {
            video.resolution = Some((v.pixel_width().get(), v.pixel_height().get()));
        }
        push_codec(&mut video.codecs, track.codec_id());
    }
    Ok(video)
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use bytes::Bytes;

    use super::*;
    use crate::FileKind;
    use crate::tagger::{TaggerConfig, detect_kind, tag_file};

    /// An MP4 of `secs` seconds: an H.264 track of `width`×`height` at 25 frames per second
    /// and an AAC track, written with the `mp4` crate (the samples are not decodable: tagging
    /// reads the boxes only).
    fn generated_mp4(width: u16, height: u16, secs: u32) -> Vec<u8> {
        let brand = |s: &str| s.parse::<mp4::FourCC>().unwrap();
        let config = mp4::Mp4Config {
            major_brand: brand("isom"),
            minor_version: 512,
            compatible_brands: vec![brand("isom"), brand("iso2"), brand("avc1"), brand("mp41")],
            timescale: 1000,
        };
        let mut writer = mp4::Mp4Writer::write_start(Cursor::new(Vec::new()), &config).unwrap();
        writer
            .add_track(&mp4::TrackConfig {
                track_type: mp4::TrackType::Video,
                timescale: 1000,
                language: "und".to_owned(),
                media_conf: mp4::MediaConfig::AvcConfig(mp4::AvcConfig {
                    width,
                    height,
                    seq_param_set: vec![0x67, 0x42, 0xc0, 0x1e, 0xd9, 0x00],
                    pic_param_set: vec![0x68, 0xce, 0x3c, 0x80],
                }),
            })
            .unwrap();
        writer
            .add_track(&mp4::TrackConfig {
                track_type: mp4::TrackType::Audio,
                timescale: 48_000,
                language: "und".to_owned(),
                media_conf: mp4::MediaConfig::AacConfig(mp4::AacConfig {
                    bitrate: 128_000,
                    profile: mp4::AudioObjectType::AacLowComplexity,
                    freq_index: mp4::SampleFreqIndex::Freq48000,
                    chan_conf: mp4::ChannelConfig::Stereo,
                }),
            })
            .unwrap();
        for frame in 0..secs * 25 {
            let sample = mp4::Mp4Sample {
                start_time: u64::from(frame) * 40,
                duration: 40,
                rendering_offset: 0,
                is_sync: frame % 25 == 0,
                bytes: Bytes::from(vec![0, 0, 0, 2, 0x65, frame as u8]),
            };
            writer.write_sample(1, &sample).unwrap();
        }
        for frame in 0..secs * 48_000 / 1024 {
            let sample = mp4::Mp4Sample {
                start_time: u64::from(frame) * 1024,
                duration: 1024,
                rendering_offset: 0,
                is_sync: true,
                bytes: Bytes::from_static(&[0x21, 0x10, 0x04]),
            };
            writer.write_sample(2, &sample).unwrap();
        }
        writer.write_end().unwrap();
        writer.into_writer().into_inner()
    }

    /// One EBML element: ID, size (one byte when it fits, as muxers write it), payload.
    fn el(id: &[u8], payload: &[u8]) -> Vec<u8> {
        let mut out = id.to_vec();
        match u8::try_from(payload.len()) {
            Ok(len) if len < 0x7f => out.push(0x80 | len),
            _ => {
                out.push(0x01);
                out.extend_from_slice(&(payload.len() as u64).to_be_bytes()[1..]);
            }
        }
        out.extend_from_slice(payload);
        out
    }

    fn uint(id: &[u8], value: u64) -> Vec<u8> {
        el(id, &value.to_be_bytes())
    }

    fn float(id: &[u8], value: f64) -> Vec<u8> {
        el(id, &value.to_be_bytes())
    }

    /// A Matroska (or WebM) file built element by element: `duration_ms` long, a video track
    /// of `width`×`height` in `video_codec`, an audio track in `audio_codec`, one cluster.
    fn generated_matroska(
        doc_type: &str,
        duration_ms: f64,
        (width, height): (u64, u64),
        video_codec: &str,
        audio_codec: &str,
    ) -> Vec<u8> {
        let header = [
            uint(&[0x42, 0x86], 1),
            uint(&[0x42, 0xf7], 1),
            uint(&[0x42, 0xf2], 4),
            uint(&[0x42, 0xf3], 8),
            el(&[0x42, 0x82], doc_type.as_bytes()),
            uint(&[0x42, 0x87], 4),
            uint(&[0x42, 0x85], 2),
        ]
        .concat();
        let info = [
            uint(&[0x2a, 0xd7, 0xb1], 1_000_000),
            float(&[0x44, 0x89], duration_ms),
            el(&[0x4d, 0x80], b"disgrafs-test"),
            el(&[0x57, 0x41], b"disgrafs-test"),
        ]
        .concat();
        let video_track = [
            uint(&[0xd7], 1),
            uint(&[0x73, 0xc5], 11),
            uint(&[0x83], 1),
            el(&[0x86], video_codec.as_bytes()),
            el(
                &[0xe0],
                &[uint(&[0xb0], width), uint(&[0xba], height)].concat(),
            ),
        ]
        .concat();
        let audio_track = [
            uint(&[0xd7], 2),
            uint(&[0x73, 0xc5], 22),
            uint(&[0x83], 2),
            el(&[0x86], audio_codec.as_bytes()),
            el(
                &[0xe1],
                &[float(&[0xb5], 48_000.0), uint(&[0x9f], 2)].concat(),
            ),
        ]
        .concat();
        let tracks = [el(&[0xae], &video_track), el(&[0xae], &audio_track)].concat();
        let cluster = [
            uint(&[0xe7], 0),
            el(
                &[0xa3],
                &[[0x81, 0, 0, 0x80].as_slice(), &[7; 300]].concat(),
            ),
            el(&[0xa3], &[0x82, 0, 0, 0x80, 4, 5]),
        ]
        .concat();
        let segment = [
            el(&[0x15, 0x49, 0xa9, 0x66], &info),
            el(&[0x16, 0x54, 0xae, 0x6b], &tracks),
            el(&[0x1f, 0x43, 0xb6, 0x75], &cluster),
        ]
        .concat();
        [
            el(&[0x1a, 0x45, 0xdf, 0xa3], &header),
            el(&[0x18, 0x53, 0x80, 0x67], &segment),
        ]
        .concat()
    }

    fn tag_names(bytes: &[u8]) -> Vec<String> {
        assert_eq!(detect_kind(bytes), FileKind::Video);
        let tags = tag_file(
            &mut Cursor::new(bytes),
            FileKind::Video,
            &TaggerConfig::default(),
        )
        .unwrap();
        tags.into_iter().map(|t| t.tag).collect()
    }

    #[test]
    fn tags_a_generated_mp4() {
        let bytes = generated_mp4(640, 360, 3);
        assert_eq!(
            tag_names(&bytes),
            [
                "format:mp4",
                "container:mp4",
                "duration:3s",
                "resolution:640x360",
                "orientation:landscape",
                "codec:h264",
                "codec:aac",
            ]
        );
    }

    #[test]
    fn tags_generated_webm_and_matroska() {
        let webm = generated_matroska("webm", 75_500.0, (1080, 1920), "V_VP9", "A_OPUS");
        assert_eq!(
            tag_names(&webm),
            [
                "format:webm",
                "container:webm",
                "duration:1m",
                "resolution:1080x1920",
                "orientation:portrait",
                "codec:vp9",
                "codec:opus",
            ]
        );
        let mkv = generated_matroska(
            "matroska",
            4_000.0,
            (720, 720),
            "V_MPEG4/ISO/AVC",
            "A_AAC/MPEG4/LC",
        );
        assert_eq!(
            tag_names(&mkv),
            [
                "format:mkv",
                "container:matroska",
                "duration:4s",
                "resolution:720x720",
                "orientation:square",
                "codec:h264",
                "codec:aac",
            ]
        );
    }

    #[test]
    fn truncated_or_corrupted_videos_are_errors_not_panics() {
        let mp4 = generated_mp4(320, 240, 1);
        let mkv = generated_matroska("matroska", 1_000.0, (320, 240), "V_VP8", "A_VORBIS");
        for original in [mp4, mkv] {
            for cut in (9..original.len()).step_by(7) {
                let truncated = &original[..cut];
                let _ = tag(&mut Cursor::new(truncated));
            }
            for at in (8..original.len()).step_by(5) {
                let mut corrupted = original.clone();
                corrupted[at] ^= 0xff;
                let _ = tag(&mut Cursor::new(&corrupted));
            }
        }
        let err = tag(&mut Cursor::new(b"\0\0\0\x18ftypmp42\0\0\0\0")).unwrap_err();
        assert!(matches!(err, Error::Tagging(_)), "{err}");
        let err = tag(&mut Cursor::new(b"\x1a\x45\xdf\xa3\x80\0\0\0\0\0\0\0")).unwrap_err();
        assert!(matches!(err, Error::Tagging(_)), "{err}");
        assert!(
            tag(&mut Cursor::new(b"RIFF\0\0\0\0AVI LIST"))
                .unwrap()
                .is_empty()
        );
    }
}
