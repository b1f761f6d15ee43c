package sim

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
)

// response is the part of OpenAI's response object the tests check.
type response struct {
	ID                string `json:"id"`
	Object            string `json:"object"`
	CreatedAt         int64  `json:"created_at"`
	Status            string `json:"status"`
	Model             string `json:"model"`
	IncompleteDetails *struct {
		Reason string `json:"reason"`
	} `json:"incomplete_details"`
	Instructions       *string `json:"instructions"`
	PreviousResponseID *string `json:"previous_response_id"`
	Output             []struct {
		ID      string `json:"id"`
		Type    string `json:"type"`
		Status  string `json:"status"`
		Role    string `json:"role"`
		Content []struct {
			Type        string            `json:"type"`
			Text        string            `json:"text"`
			Annotations []json.RawMessage `json:"annotations"`
		} `json:"content"`
	} `json:"output"`
	Usage *struct {
		InputTokens  int `json:"input_tokens"`
		OutputTokens int `json:"output_tokens"`
		TotalTokens  int `json:"total_tokens"`
	} `json:"usage"`
}

// text is the response's one message's text, or why it has none.
func (r *response) text() (string, error) {
	if len(r.Output) != 1 || r.Output[0].Type != "message" || r.Output[0].Role != "assistant" || !strings.HasPrefix(r.Output[0].ID, "msg_") ||
		len(r.Output[0].Content) != 1 || r.Output[0].Content[0].Type != "output_text" || r.Output[0].Content[0].Annotations == nil {
		return "", fmt.Errorf("output %+v, want one assistant message with one output_text part", r.Output)
	}
	return r.Output[0].Content[0].Text, nil
}

func TestResponses_PlainResponseObject(t *testing.T) {
	ts := startSim(t, Config{Model: "m", MaxTokens: 5})
	for _, tc := range []struct {
		name         string
		body         string
		wantTokens   int
		wantStatus   string
		wantInput    int
		wantModel    string
		instructions bool
	}{
		{"input string", `{"model":"alias","input":"Say hello"}`, 5, "completed", 3, "alias", false},
		{"instructions", `{"input":"hi","instructions":"Be brief."}`, 5, "completed", 1 + 3, "m", true},
		{"messages", `{"input":[{"role":"developer","content":"Be brief."},{"role":"user","content":[{"type":"input_text","text":"hi"}]},` +
			`{"type":"message","role":"assistant","content":[{"type":"output_text","text":"hello"}]},{"type":"function_call_output","call_id":"c1","output":"42"}]}`,
			5, "completed", (3 + 3) + (3 + 1) + (3 + 2) + 15, "m", false},
		{"max_output_tokens reached", `{"input":"hi","max_output_tokens":3}`, 3, "incomplete", 1, "m", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var r response
			ts.postJSON(t, "/v1/responses", tc.body, &r)
			if !strings.HasPrefix(r.ID, "resp_") || r.Object != "response" || r.CreatedAt == 0 || r.Status != tc.wantStatus || r.Model != tc.wantModel {
				t.Fatalf("response %+v, want resp_ id, object response, status %s, model %s", r, tc.wantStatus, tc.wantModel)
			}
			text, err := r.text()
			if err != nil {
				t.Fatal(err)
			}
			if text != Text(tc.wantTokens) || r.Output[0].Status != tc.wantStatus {
				t.Errorf("text %q (item %s), want %q", text, r.Output[0].Status, Text(tc.wantTokens))
			}
			if (tc.wantStatus == "incomplete") != (r.IncompleteDetails != nil && r.IncompleteDetails.Reason == "max_output_tokens") {
				t.Errorf("incomplete_details %+v with status %s", r.IncompleteDetails, r.Status)
			}
			if u := r.Usage; u == nil || u.InputTokens != tc.wantInput || u.OutputTokens != tc.wantTokens || u.TotalTokens != u.InputTokens+u.OutputTokens {
				t.Errorf("usage %+v, want %d in, %d out", r.Usage, tc.wantInput, tc.wantTokens)
			}
			if tc.instructions != (r.Instructions != nil && *r.Instructions == "Be brief.") {
				t.Errorf("instructions %v", r.Instructions)
			}
		})
	}
	ts.statsAre(t, Stats{Served: 4})
}

// sseEvent is one server-sent event: its event: name and its data.
type sseEvent struct {
	name, data string
}

// readNamedEvents reads a Responses stream to its end: every event must
// have an event: line and a data: line.
func readNamedEvents(t *testing.T, body io.Reader) []sseEvent {
	t.Helper()
	sc := bufio.NewScanner(body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	var out []sseEvent
	var cur sseEvent
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			if cur.name == "" || cur.data == "" {
				t.Fatalf("event %d: name %q, data %q; want both", len(out), cur.name, cur.data)
			}
			out = append(out, cur)
			cur = sseEvent{}
		case strings.HasPrefix(line, "event: "):
			cur.name = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "data: "):
			cur.data = strings.TrimPrefix(line, "data: ")
		default:
			t.Fatalf("not an SSE line: %q", line)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("read stream: %v", err)
	}
	if cur != (sseEvent{}) {
		t.Fatalf("stream ended inside an event: %+v", cur)
	}
	return out
}

func TestResponses_StreamSendsOpenAIEventsInOrder(t *testing.T) {
	ts := startSim(t, Config{Model: "m", MaxTokens: 4})
	for _, tc := range []struct {
		name       string
		body       string
		wantTokens int
		wantLast   string
	}{
		{"no limit", `{"model":"m","stream":true,"input":[{"role":"user","content":"hi"}]}`, 4, "response.completed"},
		{"max_output_tokens reached", `{"model":"m","stream":true,"input":"hi","max_output_tokens":2}`, 2, "response.incomplete"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp := ts.post(context.Background(), t, "/v1/responses", tc.body)
			defer resp.Body.Close()
			if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
				t.Fatalf("status %d, Content-Type %q", resp.StatusCode, resp.Header.Get("Content-Type"))
			}
			events := readNamedEvents(t, resp.Body)
			want := []string{"response.created", "response.in_progress", "response.output_item.added", "response.content_part.added"}
			for range tc.wantTokens {
				want = append(want, "response.output_text.delta")
			}
			want = append(want, "response.output_text.done", "response.content_part.done", "response.output_item.done", tc.wantLast)
			var names []string
			for _, e := range events {
				names = append(names, e.name)
			}
			if strings.Join(names, " ") != strings.Join(want, " ") {
				t.Fatalf("events\n%s\nwant\n%s", strings.Join(names, "\n"), strings.Join(want, "\n"))
			}
			var created, last response
			var itemID, deltas string
			for i, e := range events {
				var ev struct {
					Type           string          `json:"type"`
					SequenceNumber int             `json:"sequence_number"`
					Response       json.RawMessage `json:"response"`
					ItemID         string          `json:"item_id"`
					OutputIndex    *int            `json:"output_index"`
					ContentIndex   *int            `json:"content_index"`
					Item           *struct {
						ID   string `json:"id"`
						Type string `json:"type"`
						Role string `json:"role"`
					} `json:"item"`
					Part *struct {
						Type string `json:"type"`
						Text string `json:"text"`
					} `json:"part"`
					Delta *string `json:"delta"`
					Text  *string `json:"text"`
				}
				if err := json.Unmarshal([]byte(e.data), &ev); err != nil {
					t.Fatalf("event %d: %v: %s", i, err, e.data)
				}
				if ev.Type != e.name || ev.SequenceNumber != i {
					t.Errorf("event %d: type %q under event %q, sequence_number %d", i, ev.Type, e.name, ev.SequenceNumber)
				}
				switch e.name {
				case "response.created":
					if err := json.Unmarshal(ev.Response, &created); err != nil || created.Status != "in_progress" || len(created.Output) != 0 || created.Usage != nil {
						t.Errorf("created %s, want an empty response in progress", ev.Response)
					}
				case "response.output_item.added":
					if ev.Item == nil || ev.Item.Type != "message" || ev.Item.Role != "assistant" || *ev.OutputIndex != 0 {
						t.Errorf("item added %s", e.data)
					} else {
						itemID = ev.Item.ID
					}
				case "response.content_part.added", "response.content_part.done":
					if ev.Part == nil || ev.Part.Type != "output_text" || ev.ItemID != itemID || *ev.ContentIndex != 0 {
						t.Errorf("%s: %s", e.name, e.data)
					}
				case "response.output_text.delta":
					if ev.Delta == nil || ev.ItemID != itemID || ev.OutputIndex == nil || ev.ContentIndex == nil {
						t.Fatalf("delta %s", e.data)
					}
					deltas += *ev.Delta
				case "response.output_text.done":
					if ev.Text == nil || *ev.Text != Text(tc.wantTokens) || ev.ItemID != itemID {
						t.Errorf("text done %s", e.data)
					}
				case tc.wantLast:
					if err := json.Unmarshal(ev.Response, &last); err != nil {
						t.Fatal(err)
					}
				}
			}
			if deltas != Text(tc.wantTokens) {
				t.Errorf("deltas %q, want %q", deltas, Text(tc.wantTokens))
			}
			text, err := last.text()
			if err != nil || text != Text(tc.wantTokens) || last.ID != created.ID || !strings.HasPrefix(last.ID, "resp_") || last.Output[0].ID != itemID {
				t.Errorf("last response %+v (%v), want %q in the created response %s, item %s", last, err, Text(tc.wantTokens), created.ID, itemID)
			}
			if last.Usage == nil || last.Usage.OutputTokens != tc.wantTokens {
				t.Errorf("usage %+v", last.Usage)
			}
		})
	}
}

// TestResponses_PreviousResponseIDOnlyOnItsWorker: a follow-up naming a
// response this simulator made is served; one naming another worker's gets
// OpenAI's 404, which is how a test sees a router lose a conversation.
func TestResponses_PreviousResponseIDOnlyOnItsWorker(t *testing.T) {
	a, b := startSim(t, Config{Model: "m"}), startSim(t, Config{Model: "m"})
	var first response
	a.postJSON(t, "/v1/responses", `{"input":"hi"}`, &first)
	var next response
	a.postJSON(t, "/v1/responses", `{"input":"and?","previous_response_id":"`+first.ID+`"}`, &next)
	if next.PreviousResponseID == nil || *next.PreviousResponseID != first.ID || next.ID == first.ID {
		t.Fatalf("follow-up %+v, want previous_response_id %s echoed and a new id", next, first.ID)
	}
	for name, id := range map[string]string{"another worker's": first.ID, "never made": "resp_0123"} {
		resp := b.post(context.Background(), t, "/v1/responses", `{"input":"and?","previous_response_id":"`+id+`"}`)
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		var e struct {
			Error struct {
				Type  string `json:"type"`
				Param string `json:"param"`
				Code  string `json:"code"`
			} `json:"error"`
		}
		if resp.StatusCode != http.StatusNotFound || json.Unmarshal(body, &e) != nil || e.Error.Code != "previous_response_not_found" ||
			e.Error.Param != "previous_response_id" || e.Error.Type != "invalid_request_error" {
			t.Errorf("%s response: %d %s, want 404 previous_response_not_found", name, resp.StatusCode, body)
		}
	}
}
