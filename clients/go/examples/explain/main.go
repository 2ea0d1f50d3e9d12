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

// applicant is one complete instance of the demo model "credit". Go ints become
// integer features, float64s numbers, strings categories and bools booleans.
func applicant() *desideratav1.Instance {
	return desiderata.MustInstance(map[string]any{
		"seniority": 9, "home": "rent", "time": 60, "age": 30,
		"marital": "married", "job": "freelance", "expenses": 73.0, "income": 129.0,
		"assets": 0.0, "debt": 0.0, "amount": 800.0, "price": 846.0,
		"records": false,
	})
}
