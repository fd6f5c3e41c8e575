//go:build tools

// Package tools pins cosign's command in this module's graph; build.sh builds it.
package tools

import _ "github.com/sigstore/cosign/v2/cmd/cosign"
