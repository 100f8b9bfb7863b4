package tokenizer

import (
	"errors"
	"fmt"

	"github.com/ardanlabs/jinja"
)

// ErrNoChatTemplate is wrapped by ApplyChatTemplate when the model directory has no chat
// template, which is usual for base (not instruction-tuned) checkpoints.
var ErrNoChatTemplate = errors.New("no chat template")

// Message is one turn of a conversation. Role is "system", "user" or "assistant".
type Message struct {
	Role, Content string
}

// ApplyChatTemplate renders msgs with the model's chat template the way transformers'
// apply_chat_template(msgs, tokenize=False, add_generation_prompt=...) does: the template
// sees messages, add_generation_prompt, tools and documents (none), and the special tokens
// of tokenizer_config.json (bos_token, eos_token, pad_token, unk_token). With
// addGenerationPrompt the result ends with the header that opens the assistant's turn.
// Encode the result with addSpecial false when the template writes the BOS token itself.
func (t *Tokenizer) ApplyChatTemplate(msgs []Message, addGenerationPrompt bool) (string, error) {
	if t.chatErr != nil {
		return "", fmt.Errorf("apply chat template of %s: compile: %w", t.dir, t.chatErr)
	}
	if t.chat == nil {
		return "", fmt.Errorf("apply chat template: %w: %s has no chat_template in tokenizer_config.json and no chat_template.jinja; use an instruction-tuned checkpoint or build the prompt text yourself", ErrNoChatTemplate, t.dir)
	}
	messages := make([]jinja.Value, len(msgs))
	for i, m := range msgs {
		// A Dict keeps insertion order, which tojson and items() expose.
		v := jinja.NewDict()
		v.AsDict().Set("role", jinja.NewString(m.Role))
		v.AsDict().Set("content", jinja.NewString(m.Content))
		messages[i] = v
	}
	data := map[string]jinja.Value{
		"messages":              jinja.NewList(messages),
		"add_generation_prompt": jinja.NewBool(addGenerationPrompt),
		"tools":                 jinja.None(),
		"documents":             jinja.None(),
	}
	for name, tok := range t.chatVars {
		data[name] = jinja.NewString(tok)
	}
	out, err := t.chat.RenderValues(data)
	if err != nil {
		return "", fmt.Errorf("apply chat template of %s: %w", t.dir, err)
	}
	return out, nil
}
