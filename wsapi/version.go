package wsapi

// Versions on the wire. ProtocolVersion is the major version: peers that
// differ refuse each other at hello. Revision counts compatible additions
// within it: each end announces its revision in the handshake (challenge and
// hello) and in gossip metadata, and a message type introduced by a revision
// is sent only to a peer that announced that revision or a later one. Rolling
// upgrades then work in any order: nobody sends a peer a message it cannot
// read.
//
// A peer that announces no revision is at revision 0. Builds before
// revisions existed announce none, and they close a session on a message type
// they do not know, so revision 0 is the set of types every such build reads.
// That is the set of 1e3ead3^, the last build without usage accounting:
// d2f4061 reads usage_report too, but announces nothing either and cannot be
// told from an older build on the wire.
//
// From revision 1 on a peer ignores message types and fields it does not
// know instead of closing the session, so a later revision breaks nothing by
// mistake; the announcement is still what decides what is sent.

// Revision is this build's protocol revision within ProtocolVersion.
//
//	0: hello, challenge, welcome, hive_telemetry, queen, lease_request,
//	   lease_cancel, lease_release, lease_grant, lease_error, lease_wait,
//	   model_start
//	1: usage_report; unknown message types and fields are ignored
//	2: migration
//	3: lease_spare_request, lease_spares, lease_revoke, conversations,
//	   lease_uses (spare.go); the uses of a spare lease ("<lease>/<n>")
//	   in hive_telemetry
const Revision = 3

// introduced maps each message type added after revision 0 to the revision
// that added it. A type missing here is revision 0.
var introduced = map[string]int{
	TypeUsageReport: 1,
	TypeMigration:   2,
	// Spare leases (spare.go).
	TypeLeaseSpareRequest: 3,
	TypeLeaseSpares:       3,
	TypeLeaseRevoke:       3,
	TypeConversations:     3,
	TypeLeaseUses:         3,
}

// Knows reports whether a peer at revision rev reads messages of type typ.
func Knows(rev int, typ string) bool { return introduced[typ] <= rev }

// PeerKnows reports whether the other end of s reads messages of type typ.
func (s *Session) PeerKnows(typ string) bool { return Knows(s.PeerRevision, typ) }

// TypeOf returns the type tag of an encoded message as rbee peers encode
// them (the tag first), or "" when it is not there: a batch, say. Senders
// of already encoded messages use it to check Knows.
func TypeOf(msg []byte) string {
	typ, _ := peekType(msg)
	return typ
}
