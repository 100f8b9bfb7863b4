package model

import (
	"fmt"
	"testing"
)

// TestTranspose2D checks the tiled transpose against the definition, for shapes that are not
// multiples of the tile and for every element size a checkpoint's floats come in.
func TestTranspose2D(t *testing.T) {
	for _, size := range []int{1, 2, 4, 8} {
		for _, shape := range [][2]int{{1, 1}, {3, 130}, {130, 3}, {65, 129}, {64, 64}} {
			rows, cols := shape[0], shape[1]
			t.Run(fmt.Sprintf("%dx%d of %d bytes", rows, cols, size), func(t *testing.T) {
				src := make([]byte, rows*cols*size)
				for i := range src {
					src[i] = byte(i*7 + i/251)
				}
				got := transpose2D(src, rows, cols, size)
				for r := range rows {
					for c := range cols {
						for b := range size {
							if g, w := got[(c*rows+r)*size+b], src[(r*cols+c)*size+b]; g != w {
								t.Fatalf("element [%d, %d] byte %d = %d; want %d", c, r, b, g, w)
							}
						}
					}
				}
			})
		}
	}
}
