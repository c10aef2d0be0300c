//! Decoding a bus envelope as it arrives from Redis pub/sub: the one place that decides whether
//! bytes from the bus are a publication the gateway can deliver.

use prost::Message;
use thiserror::Error;

use crate::bus::Envelope;

/// Why bytes from the bus are not a deliverable publication.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EnvelopeError {
    #[error("undecodable envelope: {0}")]
    Undecodable(String),
    #[error("envelope without offset or epoch")]
    NoPosition,
    #[error("envelope names another channel")]
    OtherChannel,
}

/// Decodes the envelope published on `channel`. An envelope without a channel takes `channel`;
/// one that names another channel, or has no offset or epoch, is refused — unless it is a join
/// or leave announcement (`presence` set), which carries no position.
pub fn decode_envelope(channel: &str, payload: &[u8]) -> Result<Envelope, EnvelopeError> {
    let mut envelope =
        Envelope::decode(payload).map_err(|e| EnvelopeError::Undecodable(e.to_string()))?;
    if envelope.presence.is_none() && (envelope.offset == 0 || envelope.epoch.is_empty()) {
        return Err(EnvelopeError::NoPosition);
    }
    if envelope.channel.is_empty() {
        envelope.channel = channel.to_owned();
    } else if envelope.channel != channel {
        return Err(EnvelopeError::OtherChannel);
    }
    Ok(envelope)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_good_envelope_decodes_and_takes_the_channel() {
        let e = Envelope {
            offset: 3,
            epoch: "e".into(),
            ..Default::default()
        };
        let got = decode_envelope("news", &e.encode_to_vec()).unwrap();
        assert_eq!(got.channel, "news");
        assert_eq!(got.offset, 3);
    }

    #[test]
    fn a_presence_announcement_needs_no_position() {
        let e = Envelope {
            presence: Some(crate::bus::PresenceEvent {
                leave: true,
                client: "c".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let got = decode_envelope("room", &e.encode_to_vec()).unwrap();
        assert_eq!((got.channel.as_str(), got.offset), ("room", 0));
    }

    #[test]
    fn bad_envelopes_get_typed_errors() {
        assert!(matches!(
            decode_envelope("news", &[0xff, 0xff]),
            Err(EnvelopeError::Undecodable(_))
        ));
        assert_eq!(
            decode_envelope("news", &Envelope::default().encode_to_vec()),
            Err(EnvelopeError::NoPosition)
        );
        let other = Envelope {
            offset: 1,
            epoch: "e".into(),
            channel: "other".into(),
            ..Default::default()
        };
        assert_eq!(
            decode_envelope("news", &other.encode_to_vec()),
            Err(EnvelopeError::OtherChannel)
        );
    }
}
