package main

import (
	"strconv"
	"strings"

	"github.com/urfave/cli/v2"
)

// Repeatable flags whose values may contain commas (prompts, paths, key=value overrides with JSON
// or YAML lists) are wholeListFlags. urfave/cli's StringSliceFlag splits every value at commas,
// and v2 can turn that off only for a whole app (App.DisableSliceFlagSeparator), which would also
// stop `--link wifi,thunderbolt` and `--block 4,8`. Flags whose values are simple tokens (links,
// drafters, dtypes, numbers) stay StringSliceFlag or IntSliceFlag and keep accepting both forms.

// wholeList is the value of a wholeListFlag: each --flag VALUE appends VALUE unchanged. Values
// given on the command line replace the defaults.
type wholeList struct {
	values []string
	set    bool
}

// Set appends v whole; the first call drops the defaults.
func (l *wholeList) Set(v string) error {
	if !l.set {
		l.values, l.set = nil, true
	}
	l.values = append(l.values, v)
	return nil
}

// String quotes each value, so help shows where one ends and a default with a comma stays legible.
func (l *wholeList) String() string {
	q := make([]string, len(l.values))
	for i, v := range l.values {
		q[i] = strconv.Quote(v)
	}
	return strings.Join(q, " ")
}

// wholeListFlag is a repeatable string flag that never splits a value; read it with wholeValues.
func wholeListFlag(name, usage string, defaults ...string) cli.Flag {
	return &cli.GenericFlag{Name: name, Usage: usage, Value: &wholeList{values: defaults}}
}

// wholeValues returns the values of the wholeListFlag name (the defaults if none was given). The
// slice belongs to the flag; copy it before changing it.
func wholeValues(c *cli.Context, name string) []string {
	l, ok := c.Generic(name).(*wholeList)
	if !ok {
		panic("wholeValues: --" + name + " is not a wholeListFlag") // a programming error, caught by the flag tests
	}
	return l.values
}
