package telemetry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// ErrNoModelAPI says that none of the model APIs rbee knows answered a
// worker: it may still be loading, or speak none of them.
var ErrNoModelAPI = errors.New("no model API answered")

// What the worker's API is, as APIInfo.Kind says it.
const (
	KindLlamaServer = "llama.cpp" // llama-server: /props
	KindOllama      = "ollama"    // /api/tags
	KindOpenAI      = "openai"    // anything else serving /v1/models (vLLM, SGLang)
)

const (
	// maxModelAPIBody bounds what a worker can make a hive read: a model
	// list is a few KiB, llama-server's /props (with its chat template) tens.
	maxModelAPIBody = 1 << 20
	// modelAPIRequestTimeout bounds one request when the caller's context
	// allows more: a worker on loopback answers in milliseconds or is stuck.
	modelAPIRequestTimeout = 2 * time.Second
	// maxReportedModel is the longest model name the wire takes
	// (wsapi's maxModelLen).
	maxReportedModel = 512
)

// APIInfo is what a worker's own API says it serves.
type APIInfo struct {
	Models []string // names as ModelFromCmdline gives them; may be empty (Ollama with nothing installed)
	Slots  int      // requests served at once; 0 when the API does not say
	Kind   string   // KindLlamaServer, KindOllama or KindOpenAI
	// Version is the engine's own version where its API tells it
	// (Ollama's /api/version: "0.17.4"; llama-server's build_info:
	// "b5000"); "" otherwise.
	Version string
	// Simulated: the worker is `rbee worker simulate` (its /props says
	// "rbee_simulated": true) and serves made-up GPU figures.
	Simulated bool
}

// APIProber asks a worker's API what it serves: llama-server's /props (the
// only one that tells slots), Ollama's /api/tags (every model installed,
// loaded or not: Ollama loads one on its first request; /api/ps lists only
// the loaded ones), then the OpenAI /v1/models that vLLM, SGLang and most
// others serve. Each request is bounded by ctx and by
// modelAPIRequestTimeout; an endpoint that is missing, fails or answers
// something else is skipped.
type APIProber struct {
	// Client makes the requests; nil uses a client that ignores proxy
	// settings (a worker is on this machine or named directly) and keeps no
	// idle connections between the rare probes.
	Client *http.Client
}

// Probe asks the worker at baseURL (http://127.0.0.1:8080; a trailing /v1
// is allowed). It returns ErrNoModelAPI, wrapped with what each endpoint
// said, when none answers, and ctx's error when ctx ends first.
func (p APIProber) Probe(ctx context.Context, baseURL string) (APIInfo, error) {
	base, err := modelAPIBase(baseURL)
	if err != nil {
		return APIInfo{}, fmt.Errorf("probe worker %q: %w", baseURL, err)
	}
	var failed []error
	for _, ask := range []func(context.Context, string) (APIInfo, error){p.llamaProps, p.ollamaTags, p.openAIModels} {
		info, err := ask(ctx, base)
		if err == nil {
			return info, nil
		}
		if ctx.Err() != nil {
			return APIInfo{}, fmt.Errorf("probe worker %s: %w", base, ctx.Err())
		}
		failed = append(failed, err)
	}
	return APIInfo{}, fmt.Errorf("probe worker %s: %w: %w", base, ErrNoModelAPI, errors.Join(failed...))
}

func modelAPIBase(raw string) (string, error) {
	u, err := url.Parse(strings.TrimSpace(raw))
	if err != nil {
		return "", fmt.Errorf("parse url: %w", err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", errors.New("parse url: want http://host:port")
	}
	u.Path = strings.TrimSuffix(strings.TrimRight(u.Path, "/"), "/v1")
	u.RawQuery, u.Fragment, u.RawPath = "", "", ""
	return strings.TrimRight(u.String(), "/"), nil
}

// llamaProps reads llama-server's /props: total_slots, and the model file as
// model_path (current) or default_generation_settings.model (older builds).
// The served name comes from /v1/models when it answers, since --alias
// changes it there and not in /props.
func (p APIProber) llamaProps(ctx context.Context, base string) (APIInfo, error) {
	var props struct {
		TotalSlots *int   `json:"total_slots"`
		ModelPath  string `json:"model_path"`
		Settings   struct {
			Model string `json:"model"`
		} `json:"default_generation_settings"`
		Simulated bool   `json:"rbee_simulated"`
		BuildInfo string `json:"build_info"`
	}
	if err := p.getJSON(ctx, base+"/props", &props); err != nil {
		return APIInfo{}, err
	}
	file := props.ModelPath
	if file == "" {
		file = props.Settings.Model
	}
	if props.TotalSlots == nil && file == "" {
		return APIInfo{}, fmt.Errorf("read %s/props: not llama-server's props", base)
	}
	info := APIInfo{Kind: KindLlamaServer, Simulated: props.Simulated, Version: props.BuildInfo}
	if props.TotalSlots != nil && *props.TotalSlots > 0 && *props.TotalSlots <= maxSlots {
		info.Slots = *props.TotalSlots
	}
	if served, err := p.openAIModels(ctx, base); err == nil && len(served.Models) > 0 {
		info.Models = served.Models
	} else if name := modelName(file); name != "" {
		info.Models = []string{name}
	}
	return info, nil
}

// ollamaTags reads Ollama's /api/tags: every model installed, by its full
// name (tiny:latest), which a request may shorten (scheduler.ModelKeys).
func (p APIProber) ollamaTags(ctx context.Context, base string) (APIInfo, error) {
	var tags struct {
		Models *[]struct {
			Name  string `json:"name"`
			Model string `json:"model"`
		} `json:"models"`
	}
	if err := p.getJSON(ctx, base+"/api/tags", &tags); err != nil {
		return APIInfo{}, err
	}
	if tags.Models == nil {
		return APIInfo{}, fmt.Errorf("read %s/api/tags: no models list", base)
	}
	info := APIInfo{Kind: KindOllama}
	// The version is told, not needed: a failure leaves it unknown.
	var version struct {
		Version string `json:"version"`
	}
	if err := p.getJSON(ctx, base+"/api/version", &version); err == nil {
		info.Version = version.Version
	}
	for _, m := range *tags.Models {
		name := m.Name
		if name == "" {
			name = m.Model
		}
		info.Models = appendModel(info.Models, name)
	}
	return info, nil
}

// openAIModels reads the OpenAI /v1/models list.
func (p APIProber) openAIModels(ctx context.Context, base string) (APIInfo, error) {
	var list struct {
		Data *[]struct {
			ID string `json:"id"`
		} `json:"data"`
	}
	if err := p.getJSON(ctx, base+"/v1/models", &list); err != nil {
		return APIInfo{}, err
	}
	if list.Data == nil {
		return APIInfo{}, fmt.Errorf("read %s/v1/models: no data list", base)
	}
	info := APIInfo{Kind: KindOpenAI}
	for _, m := range *list.Data {
		info.Models = appendModel(info.Models, m.ID)
	}
	return info, nil
}

// appendModel adds a reported name in the form ModelFromCmdline gives (a
// llama-server or vLLM without a served name reports its file or directory),
// skipping empty and repeated names, and names the wire would refuse (over
// maxReportedModel bytes, control characters, bad UTF-8), which would make
// the queen reject the hive's whole report.
func appendModel(models []string, reported string) []string {
	name := modelName(reported)
	if name == "" || len(name) > maxReportedModel || !utf8.ValidString(name) || strings.ContainsFunc(name, unicode.IsControl) {
		return models
	}
	for _, m := range models {
		if m == name {
			return models
		}
	}
	return append(models, name)
}

// getJSON fetches target into v. Anything but 200 with at most maxModelAPIBody
// bytes of JSON is an error.
func (p APIProber) getJSON(ctx context.Context, target string, v any) error {
	ctx, cancel := context.WithTimeout(ctx, modelAPIRequestTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		return fmt.Errorf("get %s: %w", target, err)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := p.client().Do(req)
	if err != nil {
		return fmt.Errorf("get %s: %w", target, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("get %s: status %d", target, resp.StatusCode)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxModelAPIBody+1))
	if err != nil {
		return fmt.Errorf("read %s: %w", target, err)
	}
	if len(body) > maxModelAPIBody {
		return fmt.Errorf("read %s: body over %d bytes", target, maxModelAPIBody)
	}
	if err := json.Unmarshal(body, v); err != nil {
		return fmt.Errorf("decode %s: %w", target, err)
	}
	return nil
}

func (p APIProber) client() *http.Client {
	if p.Client != nil {
		return p.Client
	}
	return &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
}
