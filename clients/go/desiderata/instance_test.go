package desiderata_test

import (
	"math"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/desiderata-xai/desiderata/clients/go/desiderata"
	desideratav1 "github.com/desiderata-xai/desiderata/clients/go/desiderata/v1"
)

// Expected values are built by hand, independently of the helper under test.
func num(v float64) *desideratav1.FeatureValue {
	return &desideratav1.FeatureValue{Kind: &desideratav1.FeatureValue_Number{Number: v}}
}
func integer(v int64) *desideratav1.FeatureValue {
	return &desideratav1.FeatureValue{Kind: &desideratav1.FeatureValue_Integer{Integer: v}}
}
func category(v string) *desideratav1.FeatureValue {
	return &desideratav1.FeatureValue{Kind: &desideratav1.FeatureValue_Category{Category: v}}
}
func boolean(v bool) *desideratav1.FeatureValue {
	return &desideratav1.FeatureValue{Kind: &desideratav1.FeatureValue_Boolean{Boolean: v}}
}

func TestValueKinds(t *testing.T) {
	type home string   // a named string is a category
	type score float64 // a named float is a number
	type flag bool     // a named bool is a boolean
	type level uint8   // a named unsigned integer is an integer
	cases := []struct {
		name string
		in   any
		want *desideratav1.FeatureValue
	}{
		{"bool true", true, boolean(true)},
		{"bool false", false, boolean(false)},
		{"string", "rent", category("rent")},
		{"empty string", "", category("")},
		{"float64", 73.25, num(73.25)},
		{"float64 zero", 0.0, num(0)},
		{"float32", float32(1.5), num(1.5)},
		{"float32 widened exactly", float32(0.1), num(float64(float32(0.1)))},
		{"NaN passes through", math.NaN(), num(math.NaN())},
		{"int", 30, integer(30)},
		{"int negative", -7, integer(-7)},
		{"int8", int8(math.MinInt8), integer(math.MinInt8)},
		{"int16", int16(math.MaxInt16), integer(math.MaxInt16)},
		{"int32", int32(math.MinInt32), integer(math.MinInt32)},
		{"int64 min", int64(math.MinInt64), integer(math.MinInt64)},
		{"int64 max", int64(math.MaxInt64), integer(math.MaxInt64)},
		{"uint", uint(9), integer(9)},
		{"uint8", uint8(math.MaxUint8), integer(math.MaxUint8)},
		{"uint16", uint16(math.MaxUint16), integer(math.MaxUint16)},
		{"uint32", uint32(math.MaxUint32), integer(math.MaxUint32)},
		{"uint64 at MaxInt64", uint64(math.MaxInt64), integer(math.MaxInt64)},
		{"uintptr", uintptr(42), integer(42)},
		{"named string", home("own"), category("own")},
		{"named float", score(0.5), num(0.5)},
		{"named bool", flag(true), boolean(true)},
		{"named uint8", level(3), integer(3)},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := desiderata.Value(c.in)
			if err != nil {
				t.Fatalf("Value(%#v): %v", c.in, err)
			}
			if !proto.Equal(got, c.want) {
				t.Errorf("Value(%#v) = %v, want %v", c.in, got, c.want)
			}
		})
	}
}

// An integer and a number of the same magnitude are different wire values:
// the server validates an integer feature by the kind, not by the digits.
func TestValueKeepsIntegerAndNumberApart(t *testing.T) {
	i, err := desiderata.Value(800)
	if err != nil {
		t.Fatal(err)
	}
	f, err := desiderata.Value(800.0)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := i.GetKind().(*desideratav1.FeatureValue_Integer); !ok || i.GetInteger() != 800 {
		t.Errorf("Value(800) = %v, want integer 800", i)
	}
	if _, ok := f.GetKind().(*desideratav1.FeatureValue_Number); !ok || f.GetNumber() != 800 {
		t.Errorf("Value(800.0) = %v, want number 800", f)
	}
}

func TestValueRejects(t *testing.T) {
	n := 3
	cases := []struct {
		name string
		in   any
		want string // a substring of the error
	}{
		{"nil", nil, "unsupported value nil"},
		{"slice", []int{1, 2}, "unsupported value type []int"},
		{"map", map[string]int{}, "unsupported value type map[string]int"},
		{"pointer", &n, "unsupported value type *int"},
		{"struct", struct{}{}, "unsupported value type struct {}"},
		{"complex", complex(1, 2), "unsupported value type complex128"},
		{"feature value", integer(1), "unsupported value type *desideratav1.FeatureValue"},
		{"uint64 max", uint64(math.MaxUint64), "uint64 value 18446744073709551615 overflows int64"},
		{"uint64 just above", uint64(math.MaxInt64) + 1, "uint64 value 9223372036854775808 overflows int64"},
	}
	if uint64(^uint(0)) > math.MaxInt64 { // uint is 64 bits wide
		cases = append(cases, struct {
			name string
			in   any
			want string
		}{"uint max", ^uint(0), "uint value 18446744073709551615 overflows int64"})
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := desiderata.Value(c.in)
			if err == nil {
				t.Fatalf("Value(%#v) = %v, want an error", c.in, got)
			}
			if got != nil {
				t.Errorf("Value(%#v) returned %v along with the error", c.in, got)
			}
			if !strings.HasPrefix(err.Error(), "desiderata: ") || !strings.Contains(err.Error(), c.want) {
				t.Errorf("Value(%#v) error = %q, want it to contain %q", c.in, err, c.want)
			}
		})
	}
}

func TestNewInstanceSortsByName(t *testing.T) {
	features := map[string]any{
		"seniority": 9, "home": "rent", "records": false, "amount": 800.0,
		"age": uint8(30), "price": float32(846), "job": "freelance",
	}
	want := &desideratav1.Instance{Features: []*desideratav1.Feature{
		{Name: "age", Value: integer(30)},
		{Name: "amount", Value: num(800)},
		{Name: "home", Value: category("rent")},
		{Name: "job", Value: category("freelance")},
		{Name: "price", Value: num(846)},
		{Name: "records", Value: boolean(false)},
		{Name: "seniority", Value: integer(9)},
	}}
	// Map iteration order is random: the same map must always give the same
	// message, byte for byte.
	var first []byte
	for i := range 20 {
		got, err := desiderata.NewInstance(features)
		if err != nil {
			t.Fatal(err)
		}
		if !proto.Equal(got, want) {
			t.Fatalf("NewInstance = %v, want %v", got, want)
		}
		b, err := proto.MarshalOptions{Deterministic: true}.Marshal(got)
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			first = b
		} else if string(b) != string(first) {
			t.Fatalf("run %d encoded differently from run 0", i)
		}
	}
}

func TestNewInstanceEmpty(t *testing.T) {
	for _, in := range []map[string]any{nil, {}} {
		got, err := desiderata.NewInstance(in)
		if err != nil {
			t.Fatalf("NewInstance(%#v): %v", in, err)
		}
		if got == nil || len(got.GetFeatures()) != 0 {
			t.Errorf("NewInstance(%#v) = %v, want an empty instance", in, got)
		}
	}
}

func TestNewInstanceErrorNamesFeatureAndType(t *testing.T) {
	got, err := desiderata.NewInstance(map[string]any{
		"age": 30, "tags": []string{"a"}, "zip": nil, "income": 129.0,
	})
	if err == nil {
		t.Fatalf("NewInstance = %v, want an error", got)
	}
	if got != nil {
		t.Errorf("NewInstance returned %v along with the error", got)
	}
	// "tags" sorts before "zip": the error is the same on every call.
	const want = `desiderata: feature "tags": unsupported value type []string (want bool, integer, float or string)`
	if err.Error() != want {
		t.Errorf("error = %q, want %q", err, want)
	}

	_, err = desiderata.NewInstance(map[string]any{"n": uint64(math.MaxUint64)})
	if err == nil || !strings.Contains(err.Error(), `feature "n": uint64 value 18446744073709551615 overflows int64`) {
		t.Errorf("overflow error = %v", err)
	}
}

func TestMustInstance(t *testing.T) {
	got := desiderata.MustInstance(map[string]any{"b": "x", "a": int16(-2)})
	want := &desideratav1.Instance{Features: []*desideratav1.Feature{
		{Name: "a", Value: integer(-2)},
		{Name: "b", Value: category("x")},
	}}
	if !proto.Equal(got, want) {
		t.Errorf("MustInstance = %v, want %v", got, want)
	}

	defer func() {
		r := recover()
		if r == nil {
			t.Fatal("MustInstance did not panic on an unsupported value")
		}
		err, ok := r.(error)
		if !ok || !strings.Contains(err.Error(), `feature "bad": unsupported value nil`) {
			t.Errorf("panic value = %#v, want the NewInstance error", r)
		}
	}()
	desiderata.MustInstance(map[string]any{"ok": 1, "bad": nil})
}
