//! The DNS responder: any packet is answered or dropped, never a panic, and every answer
//! parses back as a DNS response to the query's id.

#![no_main]

use std::net::Ipv4Addr;
use std::sync::OnceLock;

use hickory_proto::op::{Message, MessageType};
use libfuzzer_sys::fuzz_target;
use llmsim_replayd::dns::{DnsResponder, Fallback, HostAnswers};

fn responder() -> &'static DnsResponder {
    static RESPONDER: OnceLock<DnsResponder> = OnceLock::new();
    RESPONDER.get_or_init(|| {
        let mut records = HostAnswers::new();
        records.insert("api.openai.com", Ipv4Addr::LOCALHOST);
        records.insert(
            "generativelanguage.googleapis.com",
            Ipv4Addr::new(127, 0, 0, 2),
        );
        DnsResponder::new(records, Fallback::NxDomain)
    })
}

fuzz_target!(|data: &[u8]| {
    let Some(reply) = responder().reply_without_upstream(data) else {
        return;
    };
    let message = Message::from_vec(&reply)
        .unwrap_or_else(|e| panic!("answer {reply:?} does not parse back: {e}"));
    assert_eq!(message.metadata.message_type, MessageType::Response);
    assert_eq!(reply.get(..2), data.get(..2), "answer to another id");
});
