module github.com/udpmux/udpmux

go 1.26.8

require (
	github.com/cespare/xxhash/v2 v2.3.0
	go.uber.org/goleak v1.3.0
	golang.org/x/sys v0.49.0
)

require github.com/stretchr/testify v1.11.1 // indirect
