module github.com/udpmux/udpmux/quicgo

go 1.26.0

require (
	github.com/quic-go/quic-go v0.65.0
	github.com/udpmux/udpmux v0.0.0-00010101000000-000000000000
)

require (
	golang.org/x/crypto v0.57.0 // indirect
	golang.org/x/net v0.59.0 // indirect
	golang.org/x/sys v0.49.0 // indirect
)

replace github.com/udpmux/udpmux => ../
