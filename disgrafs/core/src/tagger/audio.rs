//! Audio tagging with lofty: format, duration, sample rate, channels, and title/artist/genre/
//! album from whatever tag formats the file carries.

use std::io::{Read, Seek};
use std::time::Duration;

use lofty::file::{AudioFile, TaggedFileExt};
use lofty::probe::Probe;
use lofty::tag::Accessor;

use crate::{Error, Result, Tag};

/// A coarse duration label: seconds under a minute, then minutes, then hours (rounded down).
pub(crate) fn duration_label(duration: Duration) -> String {
    let secs = duration.as_secs();
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m", secs / 60),
        _ => format!("{}h", secs / 3600),
    }
}

/// Tags an audio file read from `reader`.
pub fn tag<R: Read + Seek>(reader: &mut R) -> Result<Vec<Tag>> {
    let file = Probe::new(reader)
        .guess_file_type()
        .map_err(|e| Error::Tagging(format!("probing the audio format: {e}")))?
        .read()
        .map_err(|e| Error::Tagging(format!("reading the audio file: {e}")))?;
    let fact = |facet: &str, value: &str| Tag::new(format!("{facet}:{value}"), 1.0);
    let format = format!("{:?}", file.file_type()).to_lowercase();
    let props = file.properties();
    let mut tags = vec![
        fact("format", &format),
        fact("duration", &duration_label(props.duration())),
    ];
    if let Some(rate) = props.sample_rate() {
        tags.push(fact("samplerate", &rate.to_string()));
    }
    if let Some(channels) = props.channels() {
        let label = match channels {
            1 => "mono".to_owned(),
            2 => "stereo".to_owned(),
            n => n.to_string(),
        };
        tags.push(fact("channels", &label));
    }
    let mut facets: Vec<(&str, Option<String>)> = vec![
        ("title", None),
        ("artist", None),
        ("album", None),
        ("genre", None),
    ];
    for tag in file.tags() {
        for (facet, value) in &mut facets {
            if value.is_none() {
                let found = match *facet {
                    "title" => tag.title(),
                    "artist" => tag.artist(),
                    "album" => tag.album(),
                    _ => tag.genre(),
                };
                *value = found.map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
            }
        }
    }
    tags.extend(
        facets
            .into_iter()
            .filter_map(|(facet, value)| value.map(|v| fact(facet, &v))),
    );
    Ok(tags)
}

#[cfg(test)]
mod tests {
    use lofty::config::WriteOptions;
    use lofty::iff::wav::RiffInfoList;
    use lofty::tag::TagExt;

    use super::*;
    use crate::FileKind;
    use crate::tagger::{TaggerConfig, detect_kind, tag_file};

    #[test]
    fn tags_a_generated_wav_with_riff_info() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tone.wav");
        let spec = hound::WavSpec {
            channels: 2,
            sample_rate: 22_050,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut writer = hound::WavWriter::create(&path, spec).unwrap();
        for i in 0..(22_050 * 3) {
            let sample = ((i as f32 * 0.05).sin() * 8000.0) as i16;
            writer.write_sample(sample).unwrap();
            writer.write_sample(sample).unwrap();
        }
        writer.finalize().unwrap();
        let mut info = RiffInfoList::new();
        info.set_title("Test Tone".to_owned());
        info.set_artist("The Generators".to_owned());
        info.set_genre("Ambient".to_owned());
        info.save_to_path(&path, WriteOptions::default()).unwrap();

        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(detect_kind(&bytes), FileKind::Audio);
        let mut file = std::fs::File::open(&path).unwrap();
        let tags = tag_file(&mut file, FileKind::Audio, &TaggerConfig::default()).unwrap();
        let names: Vec<&str> = tags.iter().map(|t| t.tag.as_str()).collect();
        assert_eq!(
            names,
            vec![
                "format:wav",
                "duration:3s",
                "samplerate:22050",
                "channels:stereo",
                "title:Test Tone",
                "artist:The Generators",
                "genre:Ambient",
            ]
        );
    }

    #[test]
    fn truncated_audio_is_an_error() {
        let err = tag(&mut std::io::Cursor::new(b"RIFF\x04\0\0\0WAVE")).unwrap_err();
        assert!(matches!(err, Error::Tagging(_)), "{err}");
    }
}
