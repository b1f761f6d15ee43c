package check

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

// Object is one document of a manifest file, decoded into its API type.
type Object struct {
	File string // the file's base name
	Doc  int    // the document's place in the file, from 1
	metav1.TypeMeta
	Meta *metav1.ObjectMeta
	Obj  any // *corev1.Namespace, *corev1.Service, *appsv1.DaemonSet...
}

func (o Object) String() string {
	return fmt.Sprintf("%s (document %d): %s %s", o.File, o.Doc, o.Kind, o.Meta.Name)
}

// kinds are the API types the manifests may use, by apiVersion/kind. A kind
// not listed fails: add it here, with its type, to use it.
var kinds = map[string]func() (any, *metav1.ObjectMeta){
	"v1/Namespace":                  newObj[corev1.Namespace],
	"v1/Secret":                     newObj[corev1.Secret],
	"v1/ConfigMap":                  newObj[corev1.ConfigMap],
	"v1/Service":                    newObj[corev1.Service],
	"apps/v1/DaemonSet":             newObj[appsv1.DaemonSet],
	"apps/v1/Deployment":            newObj[appsv1.Deployment],
	"apps/v1/StatefulSet":           newObj[appsv1.StatefulSet],
	"policy/v1/PodDisruptionBudget": newObj[policyv1.PodDisruptionBudget],
}

// metaObject is any API object: its ObjectMeta is reachable through the
// embedded field's method.
type metaObject interface{ GetObjectMeta() metav1.Object }

func newObj[T any, P interface {
	*T
	metaObject
}]() (any, *metav1.ObjectMeta) {
	p := P(new(T))
	return p, p.GetObjectMeta().(*metav1.ObjectMeta)
}

// Decode decodes one YAML document strictly into the API type its apiVersion
// and kind name: unknown fields (misspelled or misplaced), repeated keys and
// values of the wrong type are errors.
func Decode(doc []byte) (metav1.TypeMeta, any, *metav1.ObjectMeta, error) {
	var tm metav1.TypeMeta
	if err := yaml.Unmarshal(doc, &tm); err != nil {
		return tm, nil, nil, err
	}
	mk, ok := kinds[tm.APIVersion+"/"+tm.Kind]
	if !ok {
		return tm, nil, nil, fmt.Errorf("apiVersion %q, kind %q: not a kind these checks know", tm.APIVersion, tm.Kind)
	}
	obj, meta := mk()
	if err := yaml.UnmarshalStrict(doc, obj); err != nil {
		return tm, nil, nil, fmt.Errorf("%s: %w", tm.Kind, err)
	}
	return tm, obj, meta, nil
}

// SplitDocuments splits a YAML stream at its "---" lines and drops the
// documents that hold nothing but comments.
func SplitDocuments(b []byte) [][]byte {
	var docs [][]byte
	var cur bytes.Buffer
	flush := func() {
		if hasContent(cur.Bytes()) {
			docs = append(docs, bytes.Clone(cur.Bytes()))
		}
		cur.Reset()
	}
	for line := range strings.Lines(string(b)) {
		if strings.TrimRight(line, " \t\r\n") == "---" {
			flush()
			continue
		}
		cur.WriteString(line)
	}
	flush()
	return docs
}

func hasContent(doc []byte) bool {
	for line := range strings.Lines(string(doc)) {
		if t := strings.TrimSpace(line); t != "" && !strings.HasPrefix(t, "#") {
			return true
		}
	}
	return false
}

// KustomizationFile is kustomize's file; it is not a manifest.
const KustomizationFile = "kustomization.yaml"

// LoadManifests decodes every .yaml file in dir but the kustomization.
func LoadManifests(dir string) ([]Object, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil {
		return nil, err
	}
	var objs []Object
	for _, f := range files {
		base := filepath.Base(f)
		if base == KustomizationFile {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		docs := SplitDocuments(b)
		if len(docs) == 0 {
			return nil, fmt.Errorf("%s: no manifest in it", base)
		}
		for i, doc := range docs {
			tm, obj, meta, err := Decode(doc)
			if err != nil {
				return nil, fmt.Errorf("%s (document %d): %w", base, i+1, err)
			}
			objs = append(objs, Object{File: base, Doc: i + 1, TypeMeta: tm, Meta: meta, Obj: obj})
		}
	}
	return objs, nil
}

// Kustomization is the part of kustomize's file these manifests use; decoded
// strictly, so anything else in it fails until it is added here.
type Kustomization struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Resources  []string `json:"resources"`
}

// CheckKustomization checks that dir's kustomization lists every manifest
// file of dir (objs) but the Secret's placeholder (applying it would replace
// the real key), and nothing else but bases: folders with a kustomization of
// their own (an overlay's "..").
func CheckKustomization(dir string, objs []Object) []error {
	b, err := os.ReadFile(filepath.Join(dir, KustomizationFile))
	if err != nil {
		return []error{err}
	}
	var k Kustomization
	if err := yaml.UnmarshalStrict(b, &k); err != nil {
		return []error{fmt.Errorf("%s: %w", KustomizationFile, err)}
	}
	var errs []error
	if k.APIVersion != "kustomize.config.k8s.io/v1beta1" || k.Kind != "Kustomization" {
		errs = append(errs, fmt.Errorf("%s: apiVersion/kind %s/%s", KustomizationFile, k.APIVersion, k.Kind))
	}
	var secretFiles, files []string
	for _, o := range objs {
		if !slices.Contains(files, o.File) {
			files = append(files, o.File)
		}
		if o.Kind == "Secret" {
			secretFiles = append(secretFiles, o.File)
		}
	}
	for _, f := range files {
		listed := slices.Contains(k.Resources, f)
		switch {
		case slices.Contains(secretFiles, f) && listed:
			errs = append(errs, fmt.Errorf("%s lists %s: `kubectl apply -k` would replace the real cluster key with the placeholder", KustomizationFile, f))
		case !slices.Contains(secretFiles, f) && !listed:
			errs = append(errs, fmt.Errorf("%s does not list %s", KustomizationFile, f))
		}
	}
	for _, r := range k.Resources {
		if slices.Contains(files, r) {
			continue
		}
		if fi, err := os.Stat(filepath.Join(dir, r, KustomizationFile)); err == nil && fi.Mode().IsRegular() {
			continue
		}
		errs = append(errs, fmt.Errorf("%s lists %s, which is no manifest here nor a folder with a %s", KustomizationFile, r, KustomizationFile))
	}
	return errs
}
