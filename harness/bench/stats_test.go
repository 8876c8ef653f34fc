package bench

import (
	"math"
	"testing"
	"time"
)

func TestQuantile(t *testing.T) {
	xs := []float64{5, 1, 4, 2, 3} // unsorted on purpose
	for _, c := range []struct{ q, want float64 }{
		{0, 1}, {0.5, 3}, {1, 5}, {0.9, 4.6}, {0.25, 2},
	} {
		if got := Quantile(xs, c.q); math.Abs(got-c.want) > 1e-9 {
			t.Errorf("Quantile(%v) = %v, want %v", c.q, got, c.want)
		}
	}
	if xs[0] != 5 {
		t.Error("Quantile sorted its argument")
	}
	if got := Median([]float64{1, 2, 3, 10}); got != 2.5 {
		t.Errorf("even median = %v", got)
	}
	if !math.IsNaN(Median(nil)) {
		t.Error("median of nothing is a number")
	}
	// p90 of 1..1000 ms: between the 900th and 901st values.
	var ms []time.Duration
	for i := 1000; i >= 1; i-- {
		ms = append(ms, time.Duration(i)*time.Millisecond)
	}
	if got := Quantile(Millis(ms), 0.9); math.Abs(got-900.1) > 1e-9 {
		t.Errorf("p90 of 1..1000 = %v", got)
	}
}

func TestRatioAndNum(t *testing.T) {
	a, b, zero := 3.0, 2.0, 0.0
	if r := Ratio(&a, &b); r == nil || *r != 1.5 {
		t.Errorf("Ratio = %v", r)
	}
	if Ratio(&a, &zero) != nil || Ratio(nil, &b) != nil || Ratio(Num(math.NaN(), 1), &b) != nil {
		t.Error("a ratio of something missing is not nil")
	}
	if n := Num(1.23456, 2); n == nil || *n != 1.23 {
		t.Errorf("Num = %v", n)
	}
	if Num(math.NaN(), 2) != nil || Num(math.Inf(1), 2) != nil {
		t.Error("Num of a non-number is not nil")
	}
}
