// Command promlint checks a Prometheus text exposition read from stdin with
// github.com/prometheus/client_golang/prometheus/testutil/promlint, the linter `promtool check metrics` runs.
// It prints one problem per line and exits 1 if there are any, 2 if the input does not parse.
package main

import (
	"fmt"
	"os"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
)

func main() {
	problems, err := promlint.New(os.Stdin).Lint()
	if err != nil {
		fmt.Fprintf(os.Stderr, "promlint: the exposition does not parse: %v\n", err)
		os.Exit(2)
	}
	for _, p := range problems {
		fmt.Printf("%s: %s\n", p.Metric, p.Text)
	}
	if len(problems) > 0 {
		os.Exit(1)
	}
}
