// Command explain asks a desiderata server why the demo model "credit" scores
// one applicant as it does, and prints the feature attributions the caller's
// policy allows.
//
//	go run ./examples/explain -addr 127.0.0.1:50051 -key demo-ml_engineer-key -insecure
package main

import (
	"context"
	"flag"
	"fmt"
	"log"

	"github.com/desiderata-xai/desiderata/clients/go/desiderata"
	desideratav1 "github.com/desiderata-xai/desiderata/clients/go/desiderata/v1"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:50051", "server address host:port")
	key := flag.String("key", "demo-ml_engineer-key", "API key")
	plaintext := flag.Bool("insecure", false, "plaintext connection (local servers only)")
	flag.Parse()

	opts := []desiderata.Option{desiderata.WithAPIKey(*key)}
	if *plaintext {
		opts = append(opts, desiderata.WithInsecure())
	}
	client, err := desiderata.New(*addr, opts...)
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()

	resp, err := client.Explanations.Explain(context.Background(), &desideratav1.ExplainRequest{
		Model:       "credit",
		Instance:    applicant(),
		Kind:        desideratav1.ExplanationKind_EXPLANATION_KIND_FEATURE_ATTRIBUTION,
		Purpose:     "debugging",
		Consumption: desideratav1.Consumption_CONSUMPTION_STATIC,
	})
	if err != nil {
		e := desiderata.DecodeError(err)
		for _, v := range e.BadRequest {
			log.Printf("  %s: %s", v.Field, v.Description)
		}
		log.Fatal(e)
	}
	x := resp.GetExplanation()
	fmt.Printf("%s predicts %q; method %s, tier %s\n",
		x.GetModel(), x.GetPrediction().GetLabel(), x.GetMethod(), x.GetDisclosure().GetTier())
	for _, a := range x.GetFeatureAttribution().GetAttributions() {
		fmt.Printf("%3d  %-12s %+.4f\n", a.GetRank(), a.GetFeature(), a.GetValue())
	}
	for _, s := range x.GetNarrative() {
		fmt.Println(s)
	}
}

func applicant() *desideratav1.Instance {
	num := func(v float64) *desideratav1.FeatureValue {
		return &desideratav1.FeatureValue{Kind: &desideratav1.FeatureValue_Number{Number: v}}
	}
	integer := func(v int64) *desideratav1.FeatureValue {
		return &desideratav1.FeatureValue{Kind: &desideratav1.FeatureValue_Integer{Integer: v}}
	}
	cat := func(v string) *desideratav1.FeatureValue {
		return &desideratav1.FeatureValue{Kind: &desideratav1.FeatureValue_Category{Category: v}}
	}
	features := map[string]*desideratav1.FeatureValue{
		"seniority": integer(9), "home": cat("rent"), "time": integer(60), "age": integer(30),
		"marital": cat("married"), "job": cat("freelance"), "expenses": num(73), "income": num(129),
		"assets": num(0), "debt": num(0), "amount": num(800), "price": num(846),
		"records": {Kind: &desideratav1.FeatureValue_Boolean{Boolean: false}},
	}
	inst := &desideratav1.Instance{}
	for name, value := range features {
		inst.Features = append(inst.Features, &desideratav1.Feature{Name: name, Value: value})
	}
	return inst
}
