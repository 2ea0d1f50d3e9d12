package desiderata

import (
	"fmt"
	"maps"
	"math"
	"reflect"
	"slices"

	desideratav1 "github.com/desiderata-xai/desiderata/clients/go/desiderata/v1"
)

// Value returns the typed wire value of a plain Go value, by the same rules as
// the Python SDK:
//
//   - bool becomes a boolean;
//   - every signed or unsigned integer type becomes an integer (int64); an
//     unsigned value above [math.MaxInt64] is an error;
//   - float32 and float64 become a number;
//   - string becomes a category.
//
// Named types count by their underlying kind (type Home string is a category).
// Any other value, nil included, is an error.
func Value(v any) (*desideratav1.FeatureValue, error) {
	fv, err := value(v)
	if err != nil {
		return nil, fmt.Errorf("desiderata: %w", err)
	}
	return fv, nil
}

// NewInstance returns an Instance with one Feature per map entry, each value
// converted as [Value] does. Features are sorted by name, so the same map
// always gives the same message. The error names the first offending feature
// in that order.
//
//	inst, err := desiderata.NewInstance(map[string]any{"age": 30, "income": 129.0, "home": "rent"})
func NewInstance(features map[string]any) (*desideratav1.Instance, error) {
	inst, err := instance(features)
	if err != nil {
		return nil, fmt.Errorf("desiderata: %w", err)
	}
	return inst, nil
}

// MustInstance is [NewInstance] for literals in examples and tests: it panics
// when a value cannot be converted.
func MustInstance(features map[string]any) *desideratav1.Instance {
	inst, err := NewInstance(features)
	if err != nil {
		panic(err)
	}
	return inst
}

// instance is [NewInstance] without the package prefix on its error, for
// callers that add their own context (e.g. the row of a batch).
func instance(features map[string]any) (*desideratav1.Instance, error) {
	names := slices.Sorted(maps.Keys(features))
	inst := &desideratav1.Instance{Features: make([]*desideratav1.Feature, 0, len(names))}
	for _, name := range names {
		fv, err := value(features[name])
		if err != nil {
			return nil, fmt.Errorf("feature %q: %w", name, err)
		}
		inst.Features = append(inst.Features, &desideratav1.Feature{Name: name, Value: fv})
	}
	return inst, nil
}

func value(v any) (*desideratav1.FeatureValue, error) {
	switch x := v.(type) { // the common types without reflection
	case bool:
		return boolean(x), nil
	case int:
		return integer(int64(x)), nil
	case int64:
		return integer(x), nil
	case float64:
		return number(x), nil
	case string:
		return category(x), nil
	case nil:
		return nil, fmt.Errorf("unsupported value nil (want bool, integer, float or string)")
	}
	r := reflect.ValueOf(v)
	switch r.Kind() {
	case reflect.Bool:
		return boolean(r.Bool()), nil
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return integer(r.Int()), nil
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		u := r.Uint()
		if u > math.MaxInt64 {
			return nil, fmt.Errorf("%T value %d overflows int64", v, u)
		}
		return integer(int64(u)), nil
	case reflect.Float32, reflect.Float64:
		return number(r.Float()), nil
	case reflect.String:
		return category(r.String()), nil
	}
	return nil, fmt.Errorf("unsupported value type %T (want bool, integer, float or string)", v)
}

func boolean(v bool) *desideratav1.FeatureValue {
	return &desideratav1.FeatureValue{Kind: &desideratav1.FeatureValue_Boolean{Boolean: v}}
}

func integer(v int64) *desideratav1.FeatureValue {
	return &desideratav1.FeatureValue{Kind: &desideratav1.FeatureValue_Integer{Integer: v}}
}

func number(v float64) *desideratav1.FeatureValue {
	return &desideratav1.FeatureValue{Kind: &desideratav1.FeatureValue_Number{Number: v}}
}

func category(v string) *desideratav1.FeatureValue {
	return &desideratav1.FeatureValue{Kind: &desideratav1.FeatureValue_Category{Category: v}}
}
