package wsapi

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

// FuzzDecode feeds Decode arbitrary bytes. Whatever comes in, Decode must not
// panic; an error must be one of the sentinels and fit a close frame; a
// message must survive Encode and Decode again unchanged; and telemetry that
// validates must read the same to a case-sensitive JSON parser (what a
// browser relayed the raw bytes sees) as to the queen.
func FuzzDecode(f *testing.F) {
	for _, name := range []string{"hive_telemetry.json", "queen.json"} {
		f.Add(readSeed(f, name))
	}
	for _, msg := range []any{
		Challenge{Type: TypeChallenge, Nonce: "00ff", Queen: "queen-1", Version: "v0.1.0", Protocol: ProtocolVersion},
		Hello{Type: TypeHello, Name: "hive-1", Version: "v0.1.0", Protocol: ProtocolVersion, Nonce: "abcd", Proof: "beef"},
		Challenge{Type: TypeChallenge, Nonce: "00ff", Queen: "queen-1", Version: "v0.2.0", Protocol: ProtocolVersion, Revision: Revision},
		Hello{Type: TypeHello, Name: "hive-1", Version: "v0.2.0", Protocol: ProtocolVersion, Nonce: "abcd", Proof: "beef", Revision: Revision},
		Welcome{Type: TypeWelcome, Proof: "cafe", IntervalMS: 1000},
		validTelemetry(2),
		LeaseRequest{Type: TypeLeaseRequest, RequestID: "e.1", Model: "llama-3.2-1b", WaitMS: 30000},
		LeaseCancel{Type: TypeLeaseCancel, RequestID: "e.1"},
		LeaseRelease{Type: TypeLeaseRelease, LeaseID: "q.1"},
		LeaseRelease{Type: TypeLeaseRelease, LeaseID: "q.1", RanUS: 830, Conversation: "c9f2"},
		LeaseSpareRequest{Type: TypeLeaseSpareRequest, RequestID: "e.s1", Model: "m", Count: 4, Key: "team-a", Weight: 2},
		LeaseSpares{Type: TypeLeaseSpares, RequestID: "e.s1", Grants: []LeaseGrant{{Type: TypeLeaseGrant, RequestID: "e.s1.0", LeaseID: "q.7",
			Hive: "h", HiveAddr: "127.0.0.1:7833", Worker: "llm/8080", Model: "m", Term: 2, Spare: true}}},
		LeaseRevoke{Type: TypeLeaseRevoke, LeaseIDs: []string{"q.7", "q.8"}},
		Conversations{Type: TypeConversations, Turns: []ConversationWhere{{Conversation: "c9f2", Hive: "h", Worker: "llm/8080"}}},
		LeaseUses{Type: TypeLeaseUses, Uses: 4211, Models: []ModelUses{{Model: "m", Ended: 4200, RanUS: 3_150_000}}},
		LeaseGrant{Type: TypeLeaseGrant, RequestID: "e.1", LeaseID: "q.1", Hive: "h", HiveAddr: "127.0.0.1:7833", Worker: "llm/8080", Model: "m"},
		LeaseError{Type: TypeLeaseError, RequestID: "e.1", Status: 429, ErrorType: "rate_limit_exceeded", Message: "full", RetryAfterMS: 1000},
		ModelStart{Type: TypeModelStart, StartID: "q.s1", Model: "qwen2.5-7b", GPUs: []int{1}, Evict: []string{"41234"}, VRAMMB: 9000, Term: 3},
		LeaseWait{Type: TypeLeaseWait, RequestID: "e.1", Position: 3, ETAMS: 4200, Loading: "qwen2.5-7b", LoadingHive: "gpu1", LoadingMS: 12000},
		lifecycleTelemetry(),
		UsageReport{Type: TypeUsageReport, Started: time.Unix(1700000000, 0).UTC(), Buckets: []UsageBucket{
			{Start: 1700000400, Key: "a", Model: "m", Requests: 2, PromptTokens: 10, CompletionTokens: 7, Wait: []int64{1, 0, 1}}}},
		validMigration(),
		Migration{Type: TypeMigration, At: time.Unix(1700000000, 0).UTC(), Entry: "e", Model: "m", From: "h/llm/1",
			Tokens: 3, Result: MigrationFailed, Reason: "no other worker"},
		QueenEvent{Type: TypeQueen, Migrations: []Migration{validMigration()}},
	} {
		b, err := Encode(msg)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		msg, err := Decode(data)
		if err != nil {
			if msg != nil {
				t.Fatalf("Decode returned %T with error %v", msg, err)
			}
			if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrUnknownType) {
				t.Fatalf("error %v is neither ErrMalformed nor ErrUnknownType", err)
			}
			checkCloseReason(t, "bad message: "+err.Error())
			if len(err.Error()) > 300 {
				t.Fatalf("error is %d bytes", len(err.Error()))
			}
			return
		}
		b1, err := Encode(msg)
		if err != nil {
			t.Fatalf("Encode(%T) of a decoded message: %v", msg, err)
		}
		msg2, err := Decode(b1)
		if err != nil {
			t.Fatalf("Decode of re-encoded %s: %v", b1, err)
		}
		b2, err := Encode(msg2)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(b1, b2) {
			t.Fatalf("round trip not stable:\n%s\n%s", b1, b2)
		}
		var verr error
		switch m := msg.(type) {
		case *LeaseRequest:
			verr = m.Validate()
		case *LeaseCancel:
			verr = m.Validate()
		case *LeaseRelease:
			verr = m.Validate()
		case *LeaseSpareRequest:
			verr = m.Validate()
		case *Conversations:
			verr = m.Validate()
		case *LeaseUses:
			verr = m.Validate()
		case *ModelStart:
			verr = m.Validate()
		case *Migration:
			verr = m.Validate()
		case *HiveTelemetry:
			verr = m.Validate(m.HiveID)
		}
		if verr != nil {
			if !errors.Is(verr, ErrInvalid) {
				t.Fatalf("Validate error %v is not ErrInvalid", verr)
			}
			checkCloseReason(t, "bad message: "+verr.Error())
		}
		tel, ok := msg.(*HiveTelemetry)
		if !ok {
			return
		}
		for _, hive := range []string{tel.HiveID, "hive-gpu-1"} {
			if err := tel.Validate(hive); err != nil {
				if !errors.Is(err, ErrInvalid) {
					t.Fatalf("Validate error %v is not ErrInvalid", err)
				}
				checkCloseReason(t, "bad telemetry: "+err.Error())
			}
		}
		if ValidName(tel.HiveID) == nil && tel.Validate(tel.HiveID) == nil {
			if d := jsView(data, tel); len(d) > 0 {
				t.Fatalf("validated telemetry reads differently to a case-sensitive parser:\n%s", strings.Join(d, "\n"))
			}
		}
	})
}

func checkCloseReason(t *testing.T, s string) {
	t.Helper()
	r := CloseReason(s)
	if len(r) > 123 || !utf8.ValidString(r) || !strings.HasPrefix(s, r) {
		t.Fatalf("CloseReason(%q) = %q (%d bytes, valid UTF-8 %v)", s, r, len(r), utf8.ValidString(r))
	}
}

// lifecycleTelemetry is a report with every lifecycle field set.
func lifecycleTelemetry() *HiveTelemetry {
	t := validTelemetry(1)
	at := time.Date(2026, 11, 30, 5, 0, 0, 0, time.UTC)
	t.Catalog = []CatalogEntry{{Name: "qwen2.5-7b", Engine: "llama-server", Bytes: 4 << 30, Slots: 4, Ctx: 8192, VRAMMB: 6000,
		VRAMSource: "learned", LoadMS: 2100, MaxReplicas: 2, Failures: 1, FailedAt: at, FailReason: "exited with status 1: bad magic"}}
	t.GPUs = []GPUInfo{{Index: 0, Name: "NVIDIA H200", TotalVRAMMB: 143771, UsedVRAMMB: 9000, UtilPct: 12, ReservedMB: 100}}
	t.Managed = []ManagedWorker{{Instance: "41234", Model: "qwen2.5-7b", Engine: "llama-server", State: ManagedLoading, Since: at,
		PID: 99, GPUs: []int{0}, VRAMMB: 6000, StartID: "q.s1", StartedBy: "q", Leases: 0}}
	return t
}
